/*
 * The store's wire protocol: limits, frame encoders, and the parsers of
 * requests and replies. The parsers are pure functions over one byte range
 * (no allocation, no logging, never a read past the range), because they
 * face whatever a socket delivers: the server, the client, the unit tests
 * and the fuzz target share them. Layout: see "store and group" in boot.h.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"

/* ---- reading ---------------------------------------------------------- */

#define KEY_OVER "key over the limit"
#define VALUE_OVER "value over the limit"

/* A cursor over one frame body; `bad` names the first problem met (a
 * read past the end, a field over its limit), NULL while there is none. */
struct reader {
  const unsigned char *p;
  size_t left;
  const char *bad;
};

static uint64_t read_le(struct reader *r, size_t bytes) {
  if (r->bad || r->left < bytes) {
    r->bad = r->bad ? r->bad : "a field runs past the end of the frame";
    return 0;
  }
  uint64_t v = vmep__le_get(r->p, bytes);
  r->p += bytes;
  r->left -= bytes;
  return v;
}

/* A (u32 length, bytes) field of at most `max` bytes; `over` says what
 * is wrong when it is longer. */
static struct vmep_store_bytes read_bytes(struct reader *r, size_t max,
                                          const char *over) {
  struct vmep_store_bytes b = {NULL, 0};
  uint32_t n = (uint32_t)read_le(r, 4);
  if (!r->bad && n > max)
    r->bad = over;
  if (!r->bad && n > r->left)
    r->bad = "a field runs past the end of the frame";
  if (r->bad)
    return b;
  b.data = r->p;
  b.len = n;
  r->p += n;
  r->left -= n;
  return b;
}

/* `count` entries of at most `max` bytes each (VMEP_STORE_ABSENT allowed
 * when `absent_ok`); returns the range they cover. */
static struct vmep_store_bytes read_list(struct reader *r, uint32_t count,
                                         size_t max, int absent_ok,
                                         const char *over) {
  struct vmep_store_bytes list = {r->p, 0};
  size_t start = r->left;
  for (uint32_t i = 0; i < count && !r->bad; i++) {
    struct reader peek = *r;
    if (absent_ok && read_le(&peek, 4) == VMEP_STORE_ABSENT && !peek.bad)
      *r = peek;
    else
      read_bytes(r, max, over);
  }
  list.len = start - r->left;
  return list;
}

/*
 * The frame envelope: 0 when incomplete, -1 (with *error_out) when
 * impossible, else the frame size with *body set to the body.
 */
static long frame_envelope(const unsigned char *buf, size_t len,
                           struct reader *body, const char **error_out) {
  if (len < 4)
    return 0;
  uint32_t n = (uint32_t)vmep__le_get(buf, 4);
  if (n == 0 || n > VMEP_STORE_FRAME_MAX) {
    *error_out = n ? "frame length over the limit" : "empty frame";
    return -1;
  }
  if (len - 4 < n)
    return 0;
  body->p = buf + 4;
  body->left = n;
  body->bad = NULL;
  return (long)n + 4;
}

static void parse_request_fields(struct reader *r,
                                 struct vmep_store_request *q) {
  switch (q->cmd) {
  case VMEP_STORE_HELLO:
    q->version = (uint32_t)read_le(r, 4);
    if (q->version != VMEP_STORE_PROTOCOL_VERSION && !r->bad) {
      r->p += r->left; /* another layout: the store names the version */
      r->left = 0;
      break;
    }
    q->rank = (int32_t)(uint32_t)read_le(r, 4);
    q->session = read_le(r, 8);
    q->instance = read_le(r, 8);
    q->navoid = (uint32_t)read_le(r, 4);
    if (q->navoid > VMEP_STORE_AVOID_MAX && !r->bad)
      r->bad = "more store instances to avoid than the limit";
    for (uint32_t i = 0; i < q->navoid && !r->bad; i++)
      q->avoid[i] = read_le(r, 8);
    q->token = read_bytes(r, VMEP_STORE_TOKEN_MAX, "job token over the limit");
    if (q->rank < -1 && !r->bad)
      r->bad = "rank below -1";
    break;
  case VMEP_STORE_SET:
    q->key = read_bytes(r, VMEP_STORE_KEY_MAX, KEY_OVER);
    q->value = read_bytes(r, VMEP_STORE_VALUE_MAX, VALUE_OVER);
    break;
  case VMEP_STORE_GET:
  case VMEP_STORE_WAIT:
    q->timeout_ms = (int32_t)(uint32_t)read_le(r, 4);
    q->nkeys = (uint32_t)read_le(r, 4);
    if ((q->nkeys == 0 || q->timeout_ms < -1) && !r->bad)
      r->bad = q->nkeys ? "timeout below -1" : "a wait for no keys";
    q->keys = read_list(r, q->nkeys, VMEP_STORE_KEY_MAX, 0, KEY_OVER);
    break;
  case VMEP_STORE_ADD:
    q->key = read_bytes(r, VMEP_STORE_KEY_MAX, KEY_OVER);
    q->delta = (int64_t)read_le(r, 8);
    break;
  case VMEP_STORE_CAS:
    q->key = read_bytes(r, VMEP_STORE_KEY_MAX, KEY_OVER);
    q->expect_present = (int)read_le(r, 1);
    q->expected = read_bytes(r, VMEP_STORE_VALUE_MAX, VALUE_OVER);
    q->value = read_bytes(r, VMEP_STORE_VALUE_MAX, VALUE_OVER);
    if ((q->expect_present > 1 || (!q->expect_present && q->expected.len)) &&
        !r->bad)
      r->bad = "CAS expectation neither present nor absent";
    break;
  case VMEP_STORE_DELETE:
    q->key = read_bytes(r, VMEP_STORE_KEY_MAX, KEY_OVER);
    break;
  case VMEP_STORE_FORGET:
    q->rank = (int32_t)(uint32_t)read_le(r, 4);
    if (q->rank < 0 && !r->bad)
      r->bad = "FORGET of a negative rank";
    break;
  default: /* BYE has no fields */
    break;
  }
}

long vmep__store_request_parse(const void *buf, size_t len,
                               struct vmep_store_request *req_out,
                               const char **error_out) {
  struct reader r;
  struct vmep_store_request q;
  long size = frame_envelope(buf, len, &r, error_out);
  if (size <= 0)
    return size;
  memset(&q, 0, sizeof(q));
  q.cmd = (unsigned)read_le(&r, 1);
  q.seq = read_le(&r, 8);
  if (q.cmd < VMEP_STORE_HELLO || q.cmd >= VMEP_STORE_CMD_END) {
    *error_out = "unknown command";
    return -1;
  }
  parse_request_fields(&r, &q);
  if (r.bad || r.left) {
    *error_out = r.bad ? r.bad : "trailing bytes in request";
    return -1;
  }
  *req_out = q;
  return size;
}

static void parse_reply_fields(struct reader *r, unsigned cmd,
                               struct vmep_store_reply *a) {
  if (a->answer != VMEP_STORE_OK) {
    a->rank = (int32_t)(uint32_t)read_le(r, 4);
    a->message =
        read_bytes(r, VMEP_STORE_MESSAGE_MAX, "message over the limit");
    return;
  }
  switch (cmd) {
  case VMEP_STORE_GET:
    a->count = (uint32_t)read_le(r, 4);
    a->values = read_list(r, a->count, VMEP_STORE_VALUE_MAX, 1, VALUE_OVER);
    break;
  case VMEP_STORE_WAIT:
    a->count = (uint32_t)read_le(r, 4);
    break;
  case VMEP_STORE_ADD:
    a->number = (int64_t)read_le(r, 8);
    break;
  case VMEP_STORE_HELLO:
    a->instance = read_le(r, 8);
    break;
  case VMEP_STORE_CAS:
  case VMEP_STORE_DELETE:
  case VMEP_STORE_FORGET:
    a->number = (int64_t)read_le(r, 1);
    if (a->number > 1 && !r->bad)
      r->bad = "a flag neither 0 nor 1";
    break;
  default: /* BYE and SET answer OK alone */
    break;
  }
}

long vmep__store_reply_parse(const void *buf, size_t len, unsigned cmd,
                             struct vmep_store_reply *reply_out,
                             const char **error_out) {
  struct reader r;
  struct vmep_store_reply a;
  long size = frame_envelope(buf, len, &r, error_out);
  if (size <= 0)
    return size;
  memset(&a, 0, sizeof(a));
  a.rank = -1;
  a.answer = (unsigned)read_le(&r, 1);
  if (a.answer >= VMEP_STORE_ANSWER_END) {
    *error_out = "unknown answer";
    return -1;
  }
  parse_reply_fields(&r, cmd, &a);
  if (r.bad || r.left) {
    *error_out = r.bad ? r.bad : "trailing bytes in reply";
    return -1;
  }
  *reply_out = a;
  return size;
}

int vmep__store_entry_next(struct vmep_store_bytes *list,
                           struct vmep_store_bytes *entry_out) {
  struct reader r = {list->data, list->len, NULL};
  struct reader peek = r;
  struct vmep_store_bytes e = {NULL, 0};
  if (read_le(&peek, 4) == VMEP_STORE_ABSENT && !peek.bad)
    r = peek;
  else
    e = read_bytes(&r, VMEP_STORE_VALUE_MAX, VALUE_OVER);
  if (r.bad)
    return 0;
  list->data = r.p;
  list->len = r.left;
  *entry_out = e;
  return 1;
}

void vmep__store_dead_key(int rank, char *key) {
  snprintf(key, VMEP_STORE_DEAD_KEY_BYTES, VMEP_STORE_DEAD_PREFIX "%d", rank);
}

void vmep__store_session_key(int rank, char *key) {
  snprintf(key, VMEP_STORE_SESSION_KEY_BYTES, VMEP_STORE_SESSION_PREFIX "%d",
           rank);
}

int vmep__store_token_equal(const unsigned char *a, size_t a_len,
                            const unsigned char *b, size_t b_len) {
  /* Time depends on a_len only (the expected token), never on where the
   * bytes differ. */
  unsigned diff = a_len != b_len;
  for (size_t i = 0; i < a_len; i++)
    diff |= (unsigned)(a[i] ^ (i < b_len ? b[i] : 0));
  return diff == 0;
}

vmep_status vmep__store_addr_parse(const char *addr, char *host,
                                   size_t host_cap, int *port_out) {
  const char *colon = addr ? strrchr(addr, ':') : NULL;
  const char *h = addr;
  size_t h_len = colon ? (size_t)(colon - addr) : 0;
  char *end = NULL;
  long port = colon ? strtol(colon + 1, &end, 10) : 0;
  if (h_len >= 2 && h[0] == '[' && h[h_len - 1] == ']') {
    h++;
    h_len -= 2;
  } else if (colon && memchr(addr, ':', h_len)) {
    h_len = 0; /* a bare IPv6 address: its port is ambiguous */
  }
  if (!colon || h_len == 0 || colon[1] < '0' || colon[1] > '9' || *end ||
      port < 1 || port > 65535)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "store address \"%s\": expected host:port with a port "
                      "in 1..65535 ([addr]:port for IPv6)",
                      addr ? addr : "(null)");
  if (h_len >= host_cap)
    return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                      "store address \"%s\": host name longer than %zu bytes",
                      addr, host_cap - 1);
  memcpy(host, h, h_len);
  host[h_len] = '\0';
  *port_out = (int)port;
  return VMEP_OK;
}

/* ---- writing ---------------------------------------------------------- */

void vmep__wbuf_put(struct vmep_store_wbuf *w, const void *p, size_t n) {
  if (w->failed || n == 0)
    return;
  if (w->cap - w->len < n) {
    size_t cap = w->cap ? w->cap : 256;
    while (cap - w->len < n && cap <= (size_t)-1 / 2)
      cap *= 2;
    unsigned char *grown = cap - w->len >= n ? vmep__malloc(cap) : NULL;
    if (!grown) {
      w->failed = 1;
      return;
    }
    if (w->len)
      memcpy(grown, w->data, w->len);
    vmep__free(w->data);
    w->data = grown;
    w->cap = cap;
  }
  memcpy(w->data + w->len, p, n);
  w->len += n;
}

static void put_le(struct vmep_store_wbuf *w, uint64_t v, size_t bytes) {
  unsigned char b[8];
  vmep__le_put(b, v, bytes);
  vmep__wbuf_put(w, b, bytes);
}

void vmep__wbuf_put_u8(struct vmep_store_wbuf *w, unsigned v) {
  put_le(w, v, 1);
}

void vmep__wbuf_put_u32(struct vmep_store_wbuf *w, uint32_t v) {
  put_le(w, v, 4);
}

void vmep__wbuf_put_u64(struct vmep_store_wbuf *w, uint64_t v) {
  put_le(w, v, 8);
}

void vmep__wbuf_put_bytes(struct vmep_store_wbuf *w, const void *p, size_t n) {
  vmep__wbuf_put_u32(w, (uint32_t)n);
  vmep__wbuf_put(w, p, n);
}

void vmep__wbuf_frame_begin(struct vmep_store_wbuf *w) {
  w->frame_start = w->len;
  vmep__wbuf_put_u32(w, 0);
}

vmep_status vmep__wbuf_frame_end(struct vmep_store_wbuf *w) {
  size_t body = w->len - w->frame_start - 4;
  if (w->failed || body > VMEP_STORE_FRAME_MAX) {
    vmep_status status =
        w->failed ? VMEP_ERR_OUT_OF_MEMORY : VMEP_ERR_INVALID_ARG;
    w->len = w->frame_start;
    w->failed = 0;
    return status;
  }
  vmep__le_put(w->data + w->frame_start, body, 4);
  return VMEP_OK;
}

void vmep__wbuf_reset(struct vmep_store_wbuf *w) {
  w->len = 0;
  w->failed = 0;
}

void vmep__wbuf_release(struct vmep_store_wbuf *w) {
  vmep__free(w->data);
  memset(w, 0, sizeof(*w));
}

void vmep__store_reply_error(struct vmep_store_wbuf *w, unsigned answer,
                             int32_t rank, const char *fmt, ...) {
  char text[VMEP_STORE_MESSAGE_MAX + 1];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(text, sizeof(text), fmt, ap);
  va_end(ap);
  size_t len = n < 0                      ? 0
               : (size_t)n < sizeof(text) ? (size_t)n
                                          : sizeof(text) - 1;
  vmep__wbuf_frame_begin(w);
  vmep__wbuf_put_u8(w, answer);
  vmep__wbuf_put_u32(w, (uint32_t)rank);
  vmep__wbuf_put_bytes(w, text, len);
  vmep__wbuf_frame_end(w);
}

static vmep_status check_len(const char *what, size_t len, size_t max) {
  if (len <= max)
    return VMEP_OK;
  return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                    "store: %s of %zu bytes is over the limit of %zu", what,
                    len, max);
}

/* The fields of one request, after its command and sequence number. */
static vmep_status encode_fields(struct vmep_store_wbuf *w,
                                 const struct vmep_store_op *op,
                                 size_t *packed) {
  size_t key_len = op->key ? strlen(op->key) : 0;
  vmep_status status = check_len("key", key_len, VMEP_STORE_KEY_MAX);
  if (status == VMEP_OK)
    status = check_len("value", op->value_len, VMEP_STORE_VALUE_MAX);
  if (status == VMEP_OK)
    status =
        check_len("expected value", op->expected_len, VMEP_STORE_VALUE_MAX);
  if (status != VMEP_OK)
    return status;
  switch (op->cmd) {
  case VMEP_STORE_HELLO: {
    size_t token_len = strlen(op->token);
    status = check_len("job token", token_len, VMEP_STORE_TOKEN_MAX);
    if (status == VMEP_OK && op->navoid > VMEP_STORE_AVOID_MAX)
      status = vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                          "store: HELLO avoiding %zu instances (at most %u)",
                          op->navoid, VMEP_STORE_AVOID_MAX);
    vmep__wbuf_put_u32(w, VMEP_STORE_PROTOCOL_VERSION);
    vmep__wbuf_put_u32(w, (uint32_t)op->rank);
    vmep__wbuf_put_u64(w, op->session);
    vmep__wbuf_put_u64(w, op->instance);
    vmep__wbuf_put_u32(w, status == VMEP_OK ? (uint32_t)op->navoid : 0);
    for (size_t i = 0; status == VMEP_OK && i < op->navoid; i++)
      vmep__wbuf_put_u64(w, op->avoid[i]);
    vmep__wbuf_put_bytes(w, op->token, token_len);
    return status;
  }
  case VMEP_STORE_SET:
    vmep__wbuf_put_bytes(w, op->key, key_len);
    vmep__wbuf_put_bytes(w, op->value, op->value_len);
    return VMEP_OK;
  case VMEP_STORE_GET:
  case VMEP_STORE_WAIT: {
    size_t count_at = w->len + 4, body = 1 + 8 + 4 + 4;
    vmep__wbuf_put_u32(w, (uint32_t)op->timeout_ms);
    vmep__wbuf_put_u32(w, 0); /* patched below */
    for (*packed = 0; *packed < op->nkeys && !w->failed; ++*packed) {
      size_t n = strlen(op->keys[*packed]);
      if ((status = check_len("key", n, VMEP_STORE_KEY_MAX)) != VMEP_OK)
        return status;
      if (body + 4 + n > VMEP_STORE_FRAME_MAX)
        break;
      body += 4 + n;
      vmep__wbuf_put_bytes(w, op->keys[*packed], n);
    }
    if (!w->failed)
      vmep__le_put(w->data + count_at, *packed, 4);
    return VMEP_OK;
  }
  case VMEP_STORE_ADD:
    vmep__wbuf_put_bytes(w, op->key, key_len);
    vmep__wbuf_put_u64(w, (uint64_t)op->delta);
    return VMEP_OK;
  case VMEP_STORE_CAS:
    vmep__wbuf_put_bytes(w, op->key, key_len);
    vmep__wbuf_put_u8(w, op->expected != NULL);
    vmep__wbuf_put_bytes(w, op->expected, op->expected_len);
    vmep__wbuf_put_bytes(w, op->value, op->value_len);
    return VMEP_OK;
  case VMEP_STORE_DELETE:
    vmep__wbuf_put_bytes(w, op->key, key_len);
    return VMEP_OK;
  case VMEP_STORE_FORGET:
    vmep__wbuf_put_u32(w, (uint32_t)op->rank);
    if (op->rank < 0)
      return vmep__fail(VMEP_ERR_INVALID_ARG, VMEP_LOG_ERROR,
                        "store: FORGET of rank %d (ranks are >= 0)",
                        (int)op->rank);
    return VMEP_OK;
  default: /* BYE */
    return VMEP_OK;
  }
}

vmep_status vmep__store_request_encode(struct vmep_store_wbuf *w,
                                       const struct vmep_store_op *op,
                                       size_t *packed_out) {
  size_t packed = 0, start = w->len;
  vmep__wbuf_frame_begin(w);
  vmep__wbuf_put_u8(w, op->cmd);
  vmep__wbuf_put_u64(w, op->seq);
  vmep_status status = encode_fields(w, op, &packed);
  if (status != VMEP_OK) {
    w->len = start;
    w->failed = 0;
    return status;
  }
  status = vmep__wbuf_frame_end(w);
  if (status != VMEP_OK)
    return vmep__fail(status, VMEP_LOG_ERROR,
                      status == VMEP_ERR_OUT_OF_MEMORY
                          ? "store: no memory for a request frame"
                          : "store: request over the frame limit");
  if (packed_out)
    *packed_out = packed;
  return VMEP_OK;
}
