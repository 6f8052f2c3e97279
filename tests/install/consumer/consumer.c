/*
 * A program outside vmep's tree, built against an installed vmep by
 * tests/install/test_install.sh in three ways (find_package, pkg-config
 * shared, static). It calls an EP entry point whose object file reaches
 * the kernels, so a static link that lacks the CUDA runtime or libstdc++
 * fails to link, and checks the status and last-error functions.
 */
#include <stdio.h>
#include <string.h>

#include <vmep.h>

int main(void) {
  vmep_ep_config config;
  size_t bytes = 0;
  vmep_ep *ep = NULL;
  vmep_ep_config_init(&config);
  config.num_experts = 8;
  config.hidden = 1024;
  config.max_tokens_per_rank = 128;
  if (vmep_ep_buffer_bytes(&config, 2, &bytes) != VMEP_OK || bytes == 0) {
    fprintf(stderr, "consumer: vmep_ep_buffer_bytes: %s\n", vmep_last_error());
    return 1;
  }
  /* No group: refused by name, without touching a GPU. */
  vmep_status st = vmep_ep_create(NULL, &config, &ep);
  if (st != VMEP_ERR_INVALID_ARG || ep != NULL || !vmep_last_error()[0]) {
    fprintf(stderr, "consumer: vmep_ep_create(NULL group) gave %s\n",
            vmep_status_name(st));
    return 1;
  }
  /* The dispatch entry point itself, refusing a NULL buffer. */
  st = vmep_ep_dispatch(NULL, NULL, 0, NULL, NULL);
  if (st != VMEP_ERR_INVALID_ARG) {
    fprintf(stderr, "consumer: vmep_ep_dispatch(NULL) gave %s\n",
            vmep_status_name(st));
    return 1;
  }
  printf("vmep %s: buffer %zu B; %s: %s\n", vmep_version(), bytes,
         vmep_status_name(st), vmep_last_error());
  return strcmp(vmep_status_name(VMEP_OK), "VMEP_OK") != 0;
}
