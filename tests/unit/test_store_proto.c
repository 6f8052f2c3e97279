/*
 * The store's wire protocol: every request and reply survives an encode /
 * parse round trip, every prefix of a valid frame asks for more bytes, and
 * over 100,000 random and mutated frames (each in a heap block of exactly
 * its size, so ASan sees any read past it) the parsers answer size, "more"
 * or "malformed" and never point outside their input. Plus the limits
 * (the HELLO's instances to avoid among them), the address parser and the
 * token comparison.
 */
#include "boot/boot.h"
#include "store/store.h"
#include "test_store_util.h"

#define MUTATIONS 12

/* A random printable string of length [min, max] in buf. */
static void rand_text(char *buf, size_t min, size_t max) {
  size_t n = min + (size_t)(test_rand() % (max - min + 1));
  for (size_t i = 0; i < n; i++)
    buf[i] = (char)(0x21 + test_rand() % 94);
  buf[n] = '\0';
}

struct sample {
  struct vmep_store_op op;
  char key[VMEP_STORE_KEY_MAX + 1];
  char token[VMEP_STORE_TOKEN_MAX + 1];
  char keys_text[20][80];
  const char *keys[20];
  uint64_t avoid[VMEP_STORE_AVOID_MAX];
  unsigned char value[2048], expected[64];
};

static void random_op(struct sample *s) {
  struct vmep_store_op *op = &s->op;
  memset(op, 0, sizeof(*op));
  op->cmd = 1 + (unsigned)(test_rand() % (VMEP_STORE_CMD_END - 1));
  op->seq = test_rand();
  rand_text(s->key, 0, test_rand() % 8 ? 40 : VMEP_STORE_KEY_MAX);
  rand_text(s->token, 0, VMEP_STORE_TOKEN_MAX);
  op->key = s->key;
  op->token = s->token;
  op->rank = (int32_t)(test_rand() % 1001) - (op->cmd != VMEP_STORE_FORGET);
  op->session = test_rand();
  op->instance = test_rand() % 3 ? test_rand() : 0;
  op->navoid = (size_t)(test_rand() % (VMEP_STORE_AVOID_MAX + 1));
  for (size_t i = 0; i < op->navoid; i++)
    s->avoid[i] = test_rand();
  op->avoid = s->avoid;
  op->value = s->value;
  op->value_len = (size_t)(test_rand() % sizeof(s->value));
  test_fill(s->value, op->value_len, test_rand());
  op->expected = test_rand() % 2 ? s->expected : NULL;
  op->expected_len = op->expected ? (size_t)(test_rand() % 64) : 0;
  op->delta = (int64_t)test_rand();
  op->nkeys = 1 + (size_t)(test_rand() % 20);
  for (size_t i = 0; i < op->nkeys; i++) {
    rand_text(s->keys_text[i], 0, 79);
    s->keys[i] = s->keys_text[i];
  }
  op->keys = s->keys;
  op->timeout_ms = (int32_t)(test_rand() % 100000) - 1;
}

static void check_bytes(struct vmep_store_bytes b, const void *want,
                        size_t len) {
  ASSERT_EQ(b.len, len);
  ASSERT_TRUE(len == 0 || memcmp(b.data, want, len) == 0);
}

static void check_request(const struct sample *s,
                          const struct vmep_store_request *q) {
  const struct vmep_store_op *op = &s->op;
  ASSERT_EQ(q->cmd, op->cmd);
  ASSERT_EQ(q->seq, op->seq);
  switch (op->cmd) {
  case VMEP_STORE_HELLO:
    ASSERT_EQ(q->version, VMEP_STORE_PROTOCOL_VERSION);
    ASSERT_EQ(q->rank, op->rank);
    ASSERT_EQ(q->session, op->session);
    ASSERT_TRUE(q->instance == op->instance);
    ASSERT_EQ(q->navoid, op->navoid);
    for (size_t i = 0; i < op->navoid; i++)
      ASSERT_TRUE(q->avoid[i] == op->avoid[i]);
    check_bytes(q->token, op->token, strlen(op->token));
    break;
  case VMEP_STORE_SET:
    check_bytes(q->value, op->value, op->value_len);
    break;
  case VMEP_STORE_GET:
  case VMEP_STORE_WAIT: {
    struct vmep_store_bytes list = q->keys, key;
    ASSERT_EQ(q->nkeys, op->nkeys);
    ASSERT_EQ(q->timeout_ms, op->timeout_ms);
    for (size_t i = 0; i < op->nkeys; i++) {
      ASSERT_TRUE(vmep__store_entry_next(&list, &key));
      check_bytes(key, op->keys[i], strlen(op->keys[i]));
    }
    ASSERT_EQ(list.len, 0);
    return;
  }
  case VMEP_STORE_ADD:
    ASSERT_EQ(q->delta, op->delta);
    break;
  case VMEP_STORE_FORGET:
    ASSERT_EQ(q->rank, op->rank);
    return;
  case VMEP_STORE_CAS:
    ASSERT_EQ(q->expect_present, op->expected != NULL);
    check_bytes(q->expected, op->expected, op->expected_len);
    check_bytes(q->value, op->value, op->value_len);
    break;
  default:
    break;
  }
  if (op->cmd != VMEP_STORE_HELLO && op->cmd != VMEP_STORE_BYE)
    check_bytes(q->key, op->key, strlen(op->key));
}

/* A random valid reply to `cmd`; *instance_out is what a HELLO answer
 * carries (0 for the others). */
static void random_reply(struct vmep_store_wbuf *w, unsigned *cmd,
                         uint64_t *instance_out) {
  *cmd = 1 + (unsigned)(test_rand() % (VMEP_STORE_CMD_END - 1));
  *instance_out = 0;
  if (test_rand() % 4 == 0) {
    vmep__store_reply_error(
        w, 1 + (unsigned)(test_rand() % (VMEP_STORE_ANSWER_END - 1)),
        (int32_t)(test_rand() % 9) - 1, "error %llu",
        (unsigned long long)test_rand());
    return;
  }
  vmep__wbuf_frame_begin(w);
  vmep__wbuf_put_u8(w, VMEP_STORE_OK);
  if (*cmd == VMEP_STORE_GET || *cmd == VMEP_STORE_WAIT) {
    uint32_t count = (uint32_t)(test_rand() % 6);
    vmep__wbuf_put_u32(w, count);
    for (uint32_t i = 0; *cmd == VMEP_STORE_GET && i < count; i++) {
      unsigned char value[300];
      size_t n = (size_t)(test_rand() % sizeof(value));
      test_fill(value, n, i);
      if (test_rand() % 3 == 0)
        vmep__wbuf_put_u32(w, VMEP_STORE_ABSENT);
      else
        vmep__wbuf_put_bytes(w, value, n);
    }
  } else if (*cmd == VMEP_STORE_ADD) {
    vmep__wbuf_put_u64(w, test_rand());
  } else if (*cmd == VMEP_STORE_HELLO) {
    *instance_out = test_rand() | 1;
    vmep__wbuf_put_u64(w, *instance_out);
  } else if (*cmd == VMEP_STORE_CAS || *cmd == VMEP_STORE_DELETE ||
             *cmd == VMEP_STORE_FORGET) {
    vmep__wbuf_put_u8(w, (unsigned)(test_rand() % 2));
  }
  ASSERT_OK(vmep__wbuf_frame_end(w));
}

/* Parses buf[0..len) (a heap block of exactly that size) both ways and
 * checks that every range found lies inside it. */
static long parse_any(const unsigned char *buf, size_t len, unsigned cmd) {
  struct vmep_store_request q;
  struct vmep_store_reply a;
  const char *error = NULL;
  long n = vmep__store_request_parse(buf, len, &q, &error);
  ASSERT_TRUE(n >= -1 && n <= (long)len);
  ASSERT_TRUE(n != -1 || (error && error[0]));
  if (n > 0) {
    struct vmep_store_bytes list = q.keys, key;
    const struct vmep_store_bytes *ranges[] = {&q.token, &q.key, &q.value,
                                               &q.expected, &q.keys};
    for (size_t i = 0; i < VMEP_ARRAY_SIZE(ranges); i++)
      ASSERT_TRUE(!ranges[i]->len ||
                  (ranges[i]->data >= buf &&
                   ranges[i]->data + ranges[i]->len <= buf + len));
    for (uint32_t i = 0; i < q.nkeys; i++)
      ASSERT_TRUE(vmep__store_entry_next(&list, &key));
  }
  long m = vmep__store_reply_parse(buf, len, cmd, &a, &error);
  ASSERT_TRUE(m >= -1 && m <= (long)len);
  if (m > 0) {
    struct vmep_store_bytes list = a.values, value;
    for (uint32_t i = 0; cmd == VMEP_STORE_GET && i < a.count; i++) {
      ASSERT_TRUE(vmep__store_entry_next(&list, &value));
      ASSERT_TRUE(!value.data ||
                  (value.data >= buf && value.data + value.len <= buf + len));
    }
  }
  return n;
}

/* One mutation of frame[0..len) into a new exact-size heap block. */
static unsigned char *mutate(const unsigned char *frame, size_t len,
                             size_t *out_len) {
  size_t n = len;
  switch (test_rand() % 5) {
  case 0: /* truncate */
    n = (size_t)(test_rand() % (len + 1));
    break;
  case 1: /* extend */
    n = len + 1 + (size_t)(test_rand() % 16);
    break;
  case 2: /* pure noise */
    n = (size_t)(test_rand() % 64);
    break;
  default: /* bit flips, maybe in the length prefix */
    break;
  }
  unsigned char *m = malloc(n ? n : 1);
  ASSERT_TRUE(m != NULL);
  for (size_t i = 0; i < n; i++)
    m[i] = i < len ? frame[i] : (unsigned char)test_rand();
  if (n && test_rand() % 5 >= 2)
    for (int flips = 1 + (int)(test_rand() % 4); flips > 0; flips--)
      m[test_rand() % n] ^= (unsigned char)(1u << (test_rand() % 8));
  if (n >= 4 && test_rand() % 10 == 0) /* a length that lies */
    for (int i = 0; i < 4; i++)
      m[i] = (unsigned char)test_rand();
  *out_len = n;
  return m;
}

/* Parses a copy of frame[0..len) in an exact-size block. */
static long parse_copy(const unsigned char *frame, size_t len, unsigned cmd) {
  unsigned char *copy = malloc(len ? len : 1);
  ASSERT_TRUE(copy != NULL);
  if (len)
    memcpy(copy, frame, len);
  long n = parse_any(copy, len, cmd);
  free(copy);
  return n;
}

static long fuzz_frames(int rounds) {
  static struct sample s;
  struct vmep_store_wbuf w = {0};
  long parsed = 0;
  for (int round = 0; round < rounds; round++) {
    struct vmep_store_request q;
    const char *error = NULL;
    unsigned cmd = 0;
    vmep__wbuf_reset(&w);
    if (round % 2 == 0) {
      random_op(&s);
      size_t packed = 0;
      ASSERT_OK(vmep__store_request_encode(&w, &s.op, &packed));
      ASSERT_EQ(vmep__store_request_parse(w.data, w.len, &q, &error),
                (long)w.len);
      check_request(&s, &q);
      cmd = s.op.cmd;
    } else {
      uint64_t instance = 0;
      random_reply(&w, &cmd, &instance);
      struct vmep_store_reply a;
      ASSERT_EQ(vmep__store_reply_parse(w.data, w.len, cmd, &a, &error),
                (long)w.len);
      ASSERT_TRUE(a.instance == instance);
    }
    size_t cut = (size_t)(test_rand() % w.len); /* a strict prefix */
    ASSERT_EQ(parse_copy(w.data, cut, cmd), 0);
    parsed += 2;
    for (int k = 0; k < MUTATIONS; k++, parsed++) {
      size_t n = 0;
      unsigned char *m = mutate(w.data, w.len, &n);
      parse_any(m, n, cmd);
      free(m);
    }
  }
  vmep__wbuf_release(&w);
  return parsed;
}

/* A request frame: length prefix, then body[0..n). */
static long parse_body(const unsigned char *body, size_t n,
                       const char **error) {
  unsigned char *frame = malloc(n + 4);
  struct vmep_store_request q;
  ASSERT_TRUE(frame != NULL);
  for (int i = 0; i < 4; i++)
    frame[i] = (unsigned char)(n >> (8 * i));
  memcpy(frame + 4, body, n);
  long got = vmep__store_request_parse(frame, n + 4, &q, error);
  free(frame);
  return got;
}

static void test_malformed_requests(void) {
  const char *error = NULL;
  struct vmep_store_request q;
  unsigned char huge[4] = {0x01, 0x00, 0x80, 0x00}; /* FRAME_MAX + 1 */
  unsigned char max[4] = {0x00, 0x00, 0x80, 0x00};  /* FRAME_MAX */
  unsigned char zero[4] = {0};
  ASSERT_EQ(vmep__store_request_parse(huge, 4, &q, &error), -1);
  ASSERT_STR_CONTAINS(error, "over the limit");
  ASSERT_EQ(vmep__store_request_parse(max, 4, &q, &error), 0);
  ASSERT_EQ(vmep__store_request_parse(zero, 4, &q, &error), -1);
  ASSERT_STR_CONTAINS(error, "empty");
  /* cmd, seq(8), then fields. */
  unsigned char bye[9] = {VMEP_STORE_BYE};
  ASSERT_EQ(parse_body(bye, 9, &error), 13);
  unsigned char trailing[10] = {VMEP_STORE_BYE};
  ASSERT_EQ(parse_body(trailing, 10, &error), -1);
  ASSERT_STR_CONTAINS(error, "trailing");
  unsigned char unknown[9] = {99};
  ASSERT_EQ(parse_body(unknown, 9, &error), -1);
  ASSERT_STR_CONTAINS(error, "unknown command");
  unsigned char none[9] = {0};
  ASSERT_EQ(parse_body(none, 9, &error), -1);
  /* HELLO (version, rank, session, instance, n, n instances, token) with
   * rank -2, with more instances to avoid than the limit, with one
   * instance announced and none sent, with one; a HELLO of another version
   * is read up to its version. GET with no keys; GET with timeout -2. */
  unsigned char hello[49] = {VMEP_STORE_HELLO};
  hello[9] = VMEP_STORE_PROTOCOL_VERSION;
  memset(hello + 13, 0xff, 4);
  hello[13] = 0xfe;
  struct vmep_store_request q2;
  ASSERT_EQ(parse_body(hello, 41, &error), -1);
  ASSERT_STR_CONTAINS(error, "rank below -1");
  hello[13] = 0xff;
  ASSERT_EQ(parse_body(hello, 41, &error), 45);
  hello[33] = VMEP_STORE_AVOID_MAX + 1;
  ASSERT_EQ(parse_body(hello, 49, &error), -1);
  ASSERT_STR_CONTAINS(error, "more store instances to avoid");
  hello[33] = 1;
  ASSERT_EQ(parse_body(hello, 41, &error), -1);
  ASSERT_STR_CONTAINS(error, "past the end");
  ASSERT_EQ(parse_body(hello, 49, &error), 53);
  hello[9] = 2; /* version 2 had no instance fields */
  unsigned char framed[4 + 29] = {29};
  memcpy(framed + 4, hello, 29);
  ASSERT_EQ(vmep__store_request_parse(framed, sizeof(framed), &q2, &error), 33);
  ASSERT_EQ(q2.version, 2);
  unsigned char get[17] = {VMEP_STORE_GET};
  ASSERT_EQ(parse_body(get, 17, &error), -1);
  unsigned char get2[21] = {VMEP_STORE_GET, [9] = 0xfe, 0xff, 0xff, 0xff, 1};
  ASSERT_EQ(parse_body(get2, 21, &error), -1);
  get2[9] = 0xff;
  ASSERT_EQ(parse_body(get2, 21, &error), 25); /* one empty key */
  /* A key one byte over the limit, and at it. */
  size_t n = 9 + 4 + VMEP_STORE_KEY_MAX + 1;
  unsigned char *del = calloc(1, n);
  ASSERT_TRUE(del != NULL);
  del[0] = VMEP_STORE_DELETE;
  del[9] = (unsigned char)((VMEP_STORE_KEY_MAX + 1) & 0xff);
  del[10] = (unsigned char)((VMEP_STORE_KEY_MAX + 1) >> 8);
  ASSERT_EQ(parse_body(del, n, &error), -1);
  ASSERT_STR_CONTAINS(error, "key over the limit");
  ASSERT_EQ(parse_body(del, 12, &error), -1);
  ASSERT_STR_CONTAINS(error, "past the end");
  del[9] = (unsigned char)(VMEP_STORE_KEY_MAX & 0xff);
  del[10] = (unsigned char)(VMEP_STORE_KEY_MAX >> 8);
  ASSERT_EQ(parse_body(del, n - 1, &error), (long)(n - 1 + 4));
  free(del);
  /* CAS: expect_present 2; "absent" with an expected value. */
  unsigned char cas[22] = {VMEP_STORE_CAS, [13] = 2};
  ASSERT_EQ(parse_body(cas, 22, &error), -1);
  cas[13] = 0;
  ASSERT_EQ(parse_body(cas, 22, &error), 26);
  unsigned char cas2[23] = {VMEP_STORE_CAS, [14] = 1, [18] = 0x55};
  ASSERT_EQ(parse_body(cas2, 23, &error), -1);
  /* FORGET: rank -1 refused, rank 7 taken; a short rank runs past the end. */
  unsigned char forget[13] = {VMEP_STORE_FORGET, [9] = 0xff, 0xff, 0xff, 0xff};
  ASSERT_EQ(parse_body(forget, 13, &error), -1);
  ASSERT_STR_CONTAINS(error, "FORGET of a negative rank");
  forget[9] = 7;
  forget[10] = forget[11] = forget[12] = 0;
  ASSERT_EQ(parse_body(forget, 13, &error), 17);
  ASSERT_EQ(parse_body(forget, 12, &error), -1);
  ASSERT_STR_CONTAINS(error, "past the end");
}

/* Replies: unknown answer; CAS answer 2; GET answer with absent keys. */
static void test_malformed_replies(void) {
  const char *error = NULL;
  struct vmep_store_reply a;
  unsigned char r1[5] = {1, 0, 0, 0, 9};
  ASSERT_EQ(vmep__store_reply_parse(r1, 5, VMEP_STORE_SET, &a, &error), -1);
  unsigned char r2[6] = {2, 0, 0, 0, 0, 2};
  ASSERT_EQ(vmep__store_reply_parse(r2, 6, VMEP_STORE_CAS, &a, &error), -1);
  unsigned char r3[17] = {13,   0,    0,    0,    0, 2, 0, 0, 0,
                          0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
  ASSERT_EQ(vmep__store_reply_parse(r3, 17, VMEP_STORE_GET, &a, &error), 17);
  ASSERT_EQ(a.count, 2);
  struct vmep_store_bytes v;
  ASSERT_TRUE(vmep__store_entry_next(&a.values, &v));
  ASSERT_TRUE(v.data == NULL);
  ASSERT_TRUE(vmep__store_entry_next(&a.values, &v));
  ASSERT_TRUE(v.data != NULL && v.len == 0);
  ASSERT_TRUE(!vmep__store_entry_next(&a.values, &v));
}

static void test_encode_limits(void) {
  struct vmep_store_wbuf w = {0};
  struct vmep_store_op forget = {.cmd = VMEP_STORE_FORGET, .rank = -1};
  ASSERT_STATUS(vmep__store_request_encode(&w, &forget, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "FORGET of rank -1");
  ASSERT_EQ(w.len, 0);
  uint64_t ids[VMEP_STORE_AVOID_MAX + 1] = {0};
  struct vmep_store_op many = {.cmd = VMEP_STORE_HELLO,
                               .token = "t",
                               .avoid = ids,
                               .navoid = VMEP_STORE_AVOID_MAX + 1};
  ASSERT_STATUS(vmep__store_request_encode(&w, &many, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "avoiding 9 instances (at most 8)");
  ASSERT_EQ(w.len, 0);
  static char long_key[VMEP_STORE_KEY_MAX + 2];
  memset(long_key, 'k', VMEP_STORE_KEY_MAX + 1);
  struct vmep_store_op op = {.cmd = VMEP_STORE_SET, .key = long_key};
  vmep__wbuf_put_u32(&w, 7); /* something already queued stays */
  ASSERT_STATUS(vmep__store_request_encode(&w, &op, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STR_CONTAINS(vmep_last_error(), "key of 1025 bytes");
  ASSERT_EQ(w.len, 4);
  op.key = "k";
  op.value_len = VMEP_STORE_VALUE_MAX + 1;
  ASSERT_STATUS(vmep__store_request_encode(&w, &op, NULL),
                VMEP_ERR_INVALID_ARG);
  ASSERT_EQ(w.len, 4);
  /* A GET of more keys than one frame holds packs a prefix. */
  size_t nkeys = 3 * VMEP_STORE_FRAME_MAX / VMEP_STORE_KEY_MAX;
  const char **keys = malloc(nkeys * sizeof(*keys));
  ASSERT_TRUE(keys != NULL);
  long_key[VMEP_STORE_KEY_MAX] = '\0';
  for (size_t i = 0; i < nkeys; i++)
    keys[i] = long_key;
  struct vmep_store_op get = {
      .cmd = VMEP_STORE_GET, .keys = keys, .nkeys = nkeys, .timeout_ms = 5};
  size_t packed = 0;
  vmep__wbuf_reset(&w);
  ASSERT_OK(vmep__store_request_encode(&w, &get, &packed));
  ASSERT_TRUE(packed > 1000 && packed < nkeys);
  struct vmep_store_request q;
  const char *error = NULL;
  ASSERT_EQ(vmep__store_request_parse(w.data, w.len, &q, &error), (long)w.len);
  ASSERT_EQ(q.nkeys, packed);
  free(keys);
  vmep__wbuf_release(&w);
}

static void test_addr_and_token(void) {
  char host[64];
  int port = 0;
  ASSERT_OK(vmep__store_addr_parse("127.0.0.1:80", host, sizeof(host), &port));
  ASSERT_EQ(port, 80);
  ASSERT_EQ(strcmp(host, "127.0.0.1"), 0);
  ASSERT_OK(vmep__store_addr_parse("[::1]:65535", host, sizeof(host), &port));
  ASSERT_EQ(strcmp(host, "::1"), 0);
  ASSERT_EQ(port, 65535);
  const char *bad[] = {"::1:5",   "host:",      ":80",     "host:0",
                       "host",    "host:65536", "host:1a", "host:+5",
                       "host: 5", "[]:5",       "[::1]5"};
  for (size_t i = 0; i < VMEP_ARRAY_SIZE(bad); i++) {
    port = -7;
    ASSERT_STATUS(vmep__store_addr_parse(bad[i], host, sizeof(host), &port),
                  VMEP_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(vmep_last_error(), bad[i]);
    ASSERT_EQ(port, -7);
  }
  ASSERT_STATUS(vmep__store_addr_parse(NULL, host, sizeof(host), &port),
                VMEP_ERR_INVALID_ARG);
  ASSERT_STATUS(
      vmep__store_addr_parse("averyveryverylonghostname:5", host, 8, &port),
      VMEP_ERR_INVALID_ARG);
  const unsigned char *t = (const unsigned char *)"secret";
  ASSERT_TRUE(vmep__store_token_equal(t, 6, t, 6));
  ASSERT_TRUE(!vmep__store_token_equal(t, 6, t, 5));
  ASSERT_TRUE(!vmep__store_token_equal(t, 5, t, 6));
  ASSERT_TRUE(
      !vmep__store_token_equal(t, 6, (const unsigned char *)"secreT", 6));
  ASSERT_TRUE(vmep__store_token_equal(t, 0, NULL, 0));
}

int main(void) {
  test_seed("test_store_proto");
  setenv("VMEP_LOG", "error", 1);
  test_malformed_requests();
  test_malformed_replies();
  test_encode_limits();
  test_addr_and_token();
  long parsed = fuzz_frames(8000);
  printf("parsed %ld valid, truncated and mutated frames\n", parsed);
  ASSERT_TRUE(parsed >= 100000);
  return 0;
}
