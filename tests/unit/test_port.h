/*
 * A free loopback TCP port for tests that host a store (CPU tests and the
 * GPU tests alike): bound once, then released.
 */
#ifndef VMEP_TEST_PORT_H
#define VMEP_TEST_PORT_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test.h"

/* A port the kernel just handed out on 127.0.0.1 (free again now; taking
 * it back races only with other ephemeral binds, which start elsewhere). */
static inline int test_free_port(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_TRUE(fd >= 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  ASSERT_EQ(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

#endif /* VMEP_TEST_PORT_H */
