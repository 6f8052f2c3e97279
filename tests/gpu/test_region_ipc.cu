/*
 * A second process imports a region: for POSIX_FD and LEGACY, the parent
 * allocates a region, writes pattern A with a kernel and sends the
 * serialized descriptor (and the fd, with SCM_RIGHTS) over a socketpair to
 * a child it spawned (this same program, run with --child). The child
 * imports it, checks every word of A, writes pattern B and answers; the
 * parent checks every word of B. Both sides check their fd counts.
 */
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gpu_test.cuh"

/* The boot layer's private header is C. */
extern "C" {
#include "boot/boot.h"
}

extern char **environ;

struct ipc_message {
  uint64_t seed_a, seed_b;
  unsigned char desc[VMEP_MEM_DESC_MAX_BYTES];
};

static int run_child(int sock) {
  struct ipc_message msg;
  size_t got = 0;
  int fd = -1;
  vmep_mem_desc desc;
  vmep_mapping *mapping = NULL;
  ASSERT_OK(vmep__fd_recv(sock, 60000, &fd, &msg, sizeof(msg), &got, "parent"));
  ASSERT_TRUE(got > offsetof(struct ipc_message, desc));
  ASSERT_OK(vmep_mem_desc_parse(
      msg.desc, got - offsetof(struct ipc_message, desc), &desc));
  desc.fd = fd;
  /* The driver opens its device files at first use: start it before the
   * fd baseline is taken. */
  vmep_mem_caps caps;
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaFree(0));
  ASSERT_OK(vmep_mem_probe(0, &caps));
  int fds_before = count_open_fds();
  ASSERT_OK(vmep_region_import(0, &desc, &mapping));
  ASSERT_EQ(desc.fd, -1);
  void *ptr = vmep_mapping_ptr(mapping);
  size_t size = vmep_mapping_size(mapping);
  ASSERT_EQ(size, desc.size);
  ASSERT_EQ(pattern_check(ptr, size, msg.seed_a, "child reading A"), 0);
  pattern_fill(ptr, size, msg.seed_b);
  ASSERT_OK(vmep_mapping_release(mapping));
  /* The imported fd was closed by the import: one fewer than before. */
  ASSERT_EQ(count_open_fds(), fds_before - (fd >= 0 ? 1 : 0));
  ASSERT_OK(vmep__fd_send(sock, -1, "ok", 3, "parent"));
  printf("child: imported %s region of %zu B, checked A, wrote B\n",
         vmep_mem_strategy_name(desc.strategy), size);
  return 0;
}

static pid_t spawn_child(int child_sock) {
  char exe[4096], fd_arg[16];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0)
    TEST_FAIL("readlink(/proc/self/exe)");
  exe[n] = '\0';
  snprintf(fd_arg, sizeof(fd_arg), "%d", child_sock);
  char *argv[] = {exe, (char *)"--child", fd_arg, NULL};
  pid_t pid;
  if (posix_spawn(&pid, exe, NULL, NULL, argv, environ) != 0)
    TEST_FAIL("posix_spawn(%s)", exe);
  return pid;
}

static void share_with_child(vmep_mem_strategy s) {
  int socks[2];
  vmep_region *region = NULL;
  vmep_mem_desc desc;
  struct ipc_message msg;
  size_t len = 0, got = 0;
  char reply[16] = "";
  int fd = -1, status = 0;
  int fds_before = count_open_fds();
  if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, socks) != 0)
    TEST_FAIL("socketpair");
  size_t bytes = (size_t)(1 + test_rand() % 16) << 20;
  ASSERT_OK(vmep_region_alloc(0, bytes, 1u << s, &region));
  void *ptr = vmep_region_ptr(region);
  size_t size = vmep_region_size(region);
  msg.seed_a = test_rand();
  msg.seed_b = test_rand();
  pattern_fill(ptr, size, msg.seed_a);
  ASSERT_OK(vmep_region_export(region, &desc));
  ASSERT_OK(vmep_mem_desc_serialize(&desc, msg.desc, sizeof(msg.desc), &len));
  pid_t pid = spawn_child(socks[1]); /* the socket is inherited: no CLOEXEC */
  close(socks[1]);
  ASSERT_OK(vmep__fd_send(socks[0], desc.fd, &msg,
                          offsetof(struct ipc_message, desc) + len, "child"));
  vmep_mem_desc_close(&desc);
  ASSERT_OK(vmep__fd_recv(socks[0], 120000, &fd, reply, sizeof(reply), &got,
                          "child"));
  ASSERT_EQ(fd, -1);
  ASSERT_TRUE(strcmp(reply, "ok") == 0);
  if (waitpid(pid, &status, 0) != pid)
    TEST_FAIL("waitpid");
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_EQ(pattern_check(ptr, size, msg.seed_b, "parent reading B"), 0);
  ASSERT_OK(vmep_region_free(region));
  close(socks[0]);
  ASSERT_EQ(count_open_fds(), fds_before);
  printf("%s: %zu B shared with a second process both ways\n",
         vmep_mem_strategy_name(s), size);
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--child") == 0)
    return run_child(atoi(argv[2]));
  test_seed("test_region_ipc");
  gpu_test_require_device();
  vmep_mem_caps caps;
  CUDA_OK(cudaSetDevice(0));
  ASSERT_OK(vmep_mem_probe(0, &caps));
  int ran = 0;
  if (caps.posix_fd) {
    share_with_child(VMEP_MEM_POSIX_FD);
    ran++;
  }
  if (caps.legacy_ipc) {
    share_with_child(VMEP_MEM_LEGACY);
    ran++;
  }
  ASSERT_TRUE(ran > 0);
  printf("%d passed, 0 failed\n", ran);
  return 0;
}
