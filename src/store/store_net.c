/*
 * TCP plumbing of the store, bounded by deadlines: a listening socket for
 * the server, a connection with a deadline for the client (the peer may be
 * a host that does not answer at all), and waiting for a socket to become
 * ready. Sockets are non-blocking and close-on-exec.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "store/store.h"

int vmep__tcp_wait(int fd, short events, uint64_t deadline_ms) {
  for (;;) {
    struct pollfd p = {fd, events, 0};
    int n = poll(&p, 1, vmep__ms_left(deadline_ms));
    if (n >= 0)
      return n > 0;
    if (errno != EINTR)
      return -1;
  }
}

static struct addrinfo *resolve(const char *host, int port, int passive) {
  struct addrinfo hints, *res = NULL;
  char service[16];
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  snprintf(service, sizeof(service), "%d", port);
  return getaddrinfo(host, service, &hints, &res) == 0 ? res : NULL;
}

/* One connect with the deadline; 0 or an errno value. */
static int connect_by(int fd, const struct addrinfo *a, uint64_t deadline_ms) {
  int soerr = 0;
  socklen_t len = sizeof(soerr);
  if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
    return 0;
  if (errno != EINPROGRESS)
    return errno;
  int ready = vmep__tcp_wait(fd, POLLOUT, deadline_ms);
  if (ready <= 0)
    return ready == 0 ? ETIMEDOUT : errno;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
    return errno;
  return soerr;
}

int vmep__tcp_dial(const char *host, int port, uint64_t deadline_ms,
                   int *err_out) {
  struct addrinfo *res = resolve(host, port, 0);
  int fd = -1, one = 1;
  *err_out = EHOSTUNREACH; /* a name may resolve later: retried */
  for (const struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                a->ai_protocol);
    *err_out = fd < 0 ? errno : connect_by(fd, a, deadline_ms);
    if (fd >= 0 && *err_out != 0) {
      close(fd);
      fd = -1;
    }
  }
  if (res)
    freeaddrinfo(res);
  if (fd >= 0)
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

static int bound_port(int fd) {
  struct sockaddr_storage addr;
  socklen_t len = sizeof(addr);
  if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0)
    return -1;
  if (addr.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
  return ntohs(((struct sockaddr_in *)&addr)->sin_port);
}

vmep_status vmep__tcp_listen(const char *host, int port, int *fd_out,
                             int *port_out) {
  struct addrinfo *res = resolve(host, port, 1);
  int err = EADDRNOTAVAIL;
  if (!res)
    return vmep__fail(VMEP_ERR_SYSTEM, VMEP_LOG_ERROR,
                      "store: cannot resolve %s for listening",
                      host ? host : "*");
  for (const struct addrinfo *a = res; a; a = a->ai_next) {
    int one = 1;
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    a->ai_protocol);
    if (fd >= 0 &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
        bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0) {
      freeaddrinfo(res);
      *fd_out = fd;
      *port_out = bound_port(fd);
      return VMEP_OK;
    }
    err = errno;
    if (fd >= 0)
      close(fd);
  }
  freeaddrinfo(res);
  return vmep__fail_errno(err, "store: listen on %s:%d", host ? host : "*",
                          port);
}
