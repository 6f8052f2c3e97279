/*
 * NULL handles answer consistently (vmep.h's header comment): every public
 * call that takes a handle is given NULL, and must return
 * VMEP_ERR_INVALID_ARG with "<function>: <argument> is NULL" (destroyers:
 * VMEP_OK), or, for an accessor, the convention's value.
 * No GPU and no driver needed: every refusal comes before either is used.
 */
#include "test.h"

/* `call` is refused with VMEP_ERR_INVALID_ARG and a message containing
 * `says` ("function: argument is NULL"). */
#define ASSERT_NULL_REFUSED(call, says)                                        \
  do {                                                                         \
    ASSERT_STATUS(call, VMEP_ERR_INVALID_ARG);                                 \
    ASSERT_STR_CONTAINS(vmep_last_error(), says);                              \
  } while (0)

static void driver_and_mem(void) {
  vmep_mem_desc desc;
  vmep_mapping *mapping = NULL;
  char buf[VMEP_MEM_DESC_MAX_BYTES] = {0};
  size_t len = 0;
  ASSERT_NULL_REFUSED(vmep_driver_version(NULL),
                      "vmep_driver_version: version_out is NULL");
  ASSERT_NULL_REFUSED(vmep_device_count(NULL),
                      "vmep_device_count: count_out is NULL");
  ASSERT_NULL_REFUSED(vmep_mem_probe(0, NULL),
                      "vmep_mem_probe: caps_out is NULL");
  ASSERT_NULL_REFUSED(vmep_region_alloc(0, 4096, 0, NULL),
                      "region_out is NULL");
  ASSERT_STR_CONTAINS(vmep_last_error(), "vmep_region_alloc");
  ASSERT_OK(vmep_region_free(NULL));
  ASSERT_TRUE(vmep_region_ptr(NULL) == NULL);
  ASSERT_EQ(vmep_region_size(NULL), 0);
  ASSERT_EQ(vmep_region_device(NULL), -1);
  ASSERT_EQ(vmep_region_strategy(NULL), VMEP_MEM_NONE);
  ASSERT_EQ(vmep_region_reason(NULL)[0], 0); /* "" */
  ASSERT_NULL_REFUSED(vmep_region_export(NULL, &desc),
                      "vmep_region_export: region is NULL");
  vmep_mem_desc_close(NULL); /* a no-op */
  ASSERT_NULL_REFUSED(vmep_mem_desc_serialize(NULL, buf, sizeof(buf), &len),
                      "vmep_mem_desc_serialize: desc is NULL");
  ASSERT_NULL_REFUSED(vmep_mem_desc_parse(NULL, 8, &desc),
                      "vmep_mem_desc_parse: buf is NULL");
  ASSERT_NULL_REFUSED(vmep_mem_desc_parse(buf, 8, NULL),
                      "vmep_mem_desc_parse: desc_out is NULL");
  ASSERT_NULL_REFUSED(vmep_region_import(0, NULL, &mapping),
                      "vmep_region_import: desc is NULL");
  ASSERT_TRUE(mapping == NULL);
  ASSERT_OK(vmep_mapping_release(NULL));
  ASSERT_TRUE(vmep_mapping_ptr(NULL) == NULL);
  ASSERT_EQ(vmep_mapping_size(NULL), 0);
}

static void groups_and_windows(void) {
  vmep_window *win = NULL;
  ASSERT_NULL_REFUSED(vmep_group_create(0, 1, "127.0.0.1:1", NULL, NULL),
                      "vmep_group_create: group_out is NULL");
  ASSERT_NULL_REFUSED(vmep_group_create_from_env(NULL),
                      "vmep_group_create_from_env: group_out is NULL");
  ASSERT_NULL_REFUSED(vmep_group_create_custom(0, 1, NULL, NULL, NULL, NULL),
                      "vmep_group_create_custom: group_out is NULL");
  ASSERT_NULL_REFUSED(vmep_group_join(0, 2, "127.0.0.1:1", NULL, NULL),
                      "vmep_group_join: group_out is NULL");
  ASSERT_OK(vmep_group_destroy(NULL));
  ASSERT_EQ(vmep_group_rank(NULL), -1);
  ASSERT_EQ(vmep_group_local_rank(NULL), -1);
  ASSERT_EQ(vmep_group_node(NULL, 0), -1);
  ASSERT_EQ(vmep_group_size(NULL), 0);
  ASSERT_NULL_REFUSED(vmep_group_barrier(NULL),
                      "vmep_group_barrier: group is NULL");
  char buf[8] = {0};
  size_t sizes[1];
  ASSERT_NULL_REFUSED(vmep_group_allgather(NULL, buf, 4, buf),
                      "vmep_group_allgather: group is NULL");
  ASSERT_NULL_REFUSED(vmep_group_allgatherv(NULL, buf, 4, buf, 8, sizes),
                      "vmep_group_allgatherv: group is NULL");
  ASSERT_NULL_REFUSED(vmep_group_broadcast(NULL, 0, buf, 4),
                      "vmep_group_broadcast: group is NULL");
  ASSERT_NULL_REFUSED(vmep_window_create(NULL, 0, 4096, &win),
                      "vmep_window_create: group is NULL");
  ASSERT_TRUE(win == NULL);
  ASSERT_OK(vmep_window_destroy(NULL));
  ASSERT_TRUE(vmep_window_local(NULL) == NULL);
  ASSERT_TRUE(vmep_window_peer(NULL, 0) == NULL);
  ASSERT_EQ(vmep_window_size(NULL), 0);
  ASSERT_EQ(vmep_window_strategy(NULL), VMEP_MEM_NONE);
}

static void ep_buffer(void) {
  vmep_ep *ep = NULL;
  vmep_group *g = NULL;
  vmep_ep_config config;
  vmep_ep_dispatch_args dargs;
  vmep_ep_combine_args cargs;
  vmep_ep_handle h = {0, 0, 1, 1};
  void *buf = NULL;
  size_t bytes = 0;
  unsigned bits = 0;
  int32_t mask[4];
  int ranks[1] = {1}, count = 0;
  vmep_ep_config_init(&config);
  vmep_ep_dispatch_args_init(&dargs);
  vmep_ep_combine_args_init(&cargs);
  vmep_ep_config_init(NULL); /* no-ops */
  vmep_ep_dispatch_args_init(NULL);
  vmep_ep_combine_args_init(NULL);
  ASSERT_NULL_REFUSED(vmep_ep_buffer_bytes(NULL, 1, &bytes),
                      "vmep_ep_buffer_bytes: config is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_buffer_bytes(&config, 1, NULL),
                      "vmep_ep_buffer_bytes: bytes_out is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_deepep_bytes(NULL, 1, &bytes),
                      "vmep_ep_deepep_bytes: config is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_deepep_bytes(&config, 1, NULL),
                      "vmep_ep_deepep_bytes: bytes_out is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_create(NULL, &config, &ep),
                      "vmep_ep_create: group is NULL");
  ASSERT_OK(vmep_group_create_custom(0, 1, NULL, NULL, NULL, &g));
  ASSERT_NULL_REFUSED(vmep_ep_create(g, NULL, &ep),
                      "vmep_ep_create: config is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_create(g, &config, NULL),
                      "vmep_ep_create: ep_out is NULL");
  ASSERT_OK(vmep_group_destroy(g));
  ASSERT_TRUE(ep == NULL);
  ASSERT_OK(vmep_ep_destroy(NULL));
  ASSERT_EQ(vmep_ep_rank(NULL), -1);
  ASSERT_EQ(vmep_ep_device(NULL), -1);
  ASSERT_EQ(vmep_ep_num_ranks(NULL), 0);
  ASSERT_EQ(vmep_ep_num_local_experts(NULL), 0);
  ASSERT_EQ(vmep_ep_num_sms(NULL), 0);
  ASSERT_EQ(vmep_ep_max_ranks(NULL), 0);
  ASSERT_NULL_REFUSED(
      vmep_ep_dispatch(NULL, &dargs, VMEP_EP_SEND_RECV, NULL, &h),
      "vmep_ep_dispatch: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_dispatch_recv(NULL, &h, NULL),
                      "vmep_ep_dispatch_recv: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_combine_buffer(NULL, &h, &buf),
                      "vmep_ep_combine_buffer: ep is NULL");
  ASSERT_NULL_REFUSED(
      vmep_ep_combine(NULL, &cargs, &h, VMEP_EP_SEND_RECV, NULL),
      "vmep_ep_combine: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_combine_recv(NULL, &h, NULL),
                      "vmep_ep_combine_recv: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_poll_errors(NULL, &bits, NULL),
                      "vmep_ep_poll_errors: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_query_mask(NULL, mask),
                      "vmep_ep_query_mask: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_set_mask(NULL, 1, 1),
                      "vmep_ep_set_mask: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_clear_mask(NULL),
                      "vmep_ep_clear_mask: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_connect_ranks(NULL, ranks, 1, 1),
                      "vmep_ep_connect_ranks: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_disconnect_ranks(NULL, ranks, 1),
                      "vmep_ep_disconnect_ranks: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_disconnect_dead(NULL, &count),
                      "vmep_ep_disconnect_dead: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_barrier(NULL), "vmep_ep_barrier: ep is NULL");
}

/* The high-throughput calls: a NULL buffer, and a NULL argument struct
 * named by its type. */
static void ep_high_throughput(void) {
  vmep_ep_ht_dispatch_args dargs;
  vmep_ep_ht_combine_args cargs;
  vmep_ep_ht_handle h = {0, 0, 1, 0, 1, NULL, NULL, 0};
  void *buf = NULL;
  int rows = 0;
  vmep_ep_ht_dispatch_args_init(&dargs);
  vmep_ep_ht_combine_args_init(&cargs);
  vmep_ep_ht_dispatch_args_init(NULL); /* no-ops */
  vmep_ep_ht_combine_args_init(NULL);
  ASSERT_NULL_REFUSED(
      vmep_ep_ht_layout(NULL, NULL, 0, 1, NULL, NULL, NULL, NULL),
      "vmep_ep_ht_layout: ep is NULL");
  ASSERT_NULL_REFUSED(
      vmep_ep_ht_dispatch(NULL, &dargs, VMEP_EP_SEND_RECV, NULL, &h),
      "vmep_ep_ht_dispatch: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_ht_dispatch_recv(NULL, &dargs, &h, NULL),
                      "vmep_ep_ht_dispatch_recv: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_ht_combine_buffer(NULL, &h, &buf, &rows),
                      "vmep_ep_ht_combine_buffer: ep is NULL");
  ASSERT_NULL_REFUSED(vmep_ep_ht_combine(NULL, &cargs, &h, NULL),
                      "vmep_ep_ht_combine: ep is NULL");
  ASSERT_TRUE(buf == NULL && rows == 0);
}

int main(void) {
  test_seed("test_null_handles");
  driver_and_mem();
  groups_and_windows();
  ep_buffer();
  ep_high_throughput();
  printf("4 passed, 0 failed\n");
  return 0;
}
