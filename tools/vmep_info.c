/*
 * vmep-info: what this machine supports for vmep and why. Prints the driver
 * and runtime versions, every device's sharing capabilities, the strategy
 * the allocation chain picks there and the reason for every strategy it
 * cannot use, how nodes are decided (host identity or pretend nodes), then
 * the inter-node engine (UCX, loaded at run time: its version or why it is
 * unavailable, what it can register, and what each device offers a NIC);
 * with --config, every environment variable vmep reads. Any
 * variable whose value breaks its rule is reported (one line each on
 * stderr, marked in --config) and makes the exit status 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "cli.h"
#include "net/net.h"
#include "vmep.h"

static void usage(FILE *out) {
  fprintf(out, "usage: vmep-info [--config] [--version] [--help]\n"
               "  (no option)  versions, how nodes are decided, devices, "
               "capabilities,\n"
               "               strategy\n"
               "  --config     every environment variable vmep reads, with "
               "value, default and doc;\n"
               "               a value that breaks its rule is marked "
               "INVALID (exit 1)\n"
               "  --version    print the version\n"
               "Exit status: 0, 1 when a variable is invalid or a device "
               "fails, 2 for usage.\n");
}

/* Checks every variable: one line on stderr per invalid value. Returns the
 * number of invalid ones. */
static int check_config(void) {
  int invalid = 0;
  for (int i = 0; i < vmep_config_count(); i++)
    if (vmep_config_check(i, NULL) != VMEP_OK) {
      fprintf(stderr, "vmep-info: %s\n", vmep_last_error());
      invalid++;
    }
  return invalid;
}

static int print_config(void) {
  int invalid = 0;
  for (int i = 0; i < vmep_config_count(); i++) {
    const char *name, *def, *doc, *value, *allowed;
    if (vmep_config_row(i, &name, &def, &doc, &value) != VMEP_OK)
      continue;
    int bad = vmep_config_check(i, &allowed) != VMEP_OK;
    printf("%-18s = %-10s (default \"%s\")%s%s\n    %s\n", name,
           value ? value : "(unset)", def, bad ? "  INVALID: expected " : "",
           bad ? allowed : "", doc);
    invalid += bad;
  }
  return invalid;
}

/* How a group decides nodes (docs/TOPOLOGY.md): VMEP_NODES, and under a
 * launcher (VMEP_RANK, VMEP_WORLD_SIZE) this rank's pretend node. An
 * invalid value is reported by check_config; this line only says so. */
static void print_nodes(void) {
  const char *nodes = getenv("VMEP_NODES");
  const char *rank = getenv("VMEP_RANK"), *size = getenv("VMEP_WORLD_SIZE");
  long long n = 0, r = 0, s = 0;
  if (nodes && nodes[0] && cli_parse_int(nodes, 0, 65536, &n) != 0) {
    printf("nodes: VMEP_NODES=\"%s\" is invalid\n", nodes);
    return;
  }
  if (n == 0) {
    printf("nodes: from host identity\n");
    return;
  }
  printf("nodes: %lld pretend nodes (VMEP_NODES)", n);
  if (size && rank && cli_parse_int(size, 1, 2147483647LL, &s) == 0 &&
      cli_parse_int(rank, 0, s - 1, &r) == 0)
    printf("; rank %lld of %lld is in node %lld", r, s, r * n / s);
  printf("\n");
}

static const char *yes_no(int v) { return v ? "yes" : "no"; }

static void print_strategy(const vmep_mem_caps *caps, vmep_mem_strategy s,
                           int usable) {
  printf("  %-20s %s%s%s\n", vmep_mem_strategy_name(s), yes_no(usable),
         usable ? "" : ": ", usable ? "" : caps->reason[s]);
}

static int print_device(int device) {
  vmep_mem_caps caps;
  vmep_status st = vmep_mem_probe(device, &caps);
  if (st != VMEP_OK) {
    printf("device %d: probe failed: %s (%s)\n", device, vmep_status_name(st),
           vmep_last_error());
    return 1;
  }
  printf("device %d: %s, sm_%d%d, %.1f GiB, uuid ", device, caps.name,
         caps.cc_major, caps.cc_minor,
         (double)caps.total_bytes / (1024.0 * 1024.0 * 1024.0));
  for (int i = 0; i < 16; i++)
    printf("%02x%s", caps.uuid[i],
           (i == 3 || i == 5 || i == 7 || i == 9) ? "-" : "");
  printf("\n");
  printf("  %-20s %s\n", "vmm", yes_no(caps.vmm));
  printf("  %-20s %s\n", "fabric attribute", yes_no(caps.fabric_attr));
  printf("  %-20s %s\n", "rdma with vmm", yes_no(caps.rdma_with_vmm));
  printf("  %-20s %zu B\n", "granularity", caps.granularity);
  printf("  strategies (trial allocation and export):\n");
  print_strategy(&caps, VMEP_MEM_FABRIC, caps.fabric);
  print_strategy(&caps, VMEP_MEM_POSIX_FD, caps.posix_fd);
  print_strategy(&caps, VMEP_MEM_LEGACY, caps.legacy_ipc);
  printf("  %-20s %s\n", "auto picks", vmep_mem_strategy_name(caps.best));

  /* What a real allocation does under the current VMEP_MEM_SHARE. */
  vmep_region *region = NULL;
  st = vmep_region_alloc(device, 1, 0, &region);
  if (st == VMEP_OK) {
    printf("  %-20s %s (%zu B region)%s%s\n", "allocation uses",
           vmep_mem_strategy_name(vmep_region_strategy(region)),
           vmep_region_size(region),
           vmep_region_reason(region)[0] ? "; skipped: " : "",
           vmep_region_reason(region));
    vmep_region_free(region);
  } else {
    printf("  %-20s failed: %s (%s)\n", "allocation", vmep_status_name(st),
           vmep_last_error());
  }
  return 0;
}

/* The inter-node engine: what the RDMA transport offers here, and what
 * each of `count` devices offers a NIC (GPUDirect RDMA on VMM memory). */
static void print_engine(int count) {
  struct vmep_engine_info info;
  if (vmep__engine_probe(&info) != VMEP_OK)
    return;
  if (!info.available) {
    printf("inter-node engine: %s not available: %s\n", info.name, info.reason);
    return;
  }
  printf("inter-node engine: %s %s\n", info.name, info.version);
  printf("  %-20s %s\n", "cuda memory",
         info.cuda_memory ? "yes (GPU regions registered directly)"
                          : "no (GPU data must be staged through host "
                            "memory)");
  for (int d = 0; d < count; d++) {
    vmep_mem_caps caps;
    if (vmep_mem_probe(d, &caps) == VMEP_OK)
      printf("  %-20s device %d: %s, dma-buf %s\n", "gpudirect rdma (vmm)", d,
             yes_no(caps.rdma_with_vmm), yes_no(caps.dma_buf));
  }
}

int main(int argc, char **argv) {
  if (argc > 2)
    return cli_usage_error("vmep-info",
                           "unexpected argument %s (see "
                           "vmep-info --help)",
                           argv[2]);
  if (argc == 2) {
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
      usage(stdout);
      return 0;
    }
    if (strcmp(argv[1], "--version") == 0)
      return cli_print_version("vmep-info");
    if (strcmp(argv[1], "--config") != 0)
      return cli_usage_error("vmep-info",
                             "unknown option %s (see vmep-info "
                             "--help)",
                             argv[1]);
    int invalid = print_config();
    fflush(stdout);
    return check_config() || invalid ? 1 : 0;
  }
  int invalid = check_config();
  int runtime = 0, driver = 0, count = 0;
  printf("vmep %s\n", vmep_version());
  print_nodes();
  if (cudaRuntimeGetVersion(&runtime) == cudaSuccess)
    printf("CUDA runtime: %d.%d\n", runtime / 1000, (runtime % 1000) / 10);
  vmep_status st = vmep_driver_version(&driver);
  if (st != VMEP_OK) {
    printf("CUDA driver: not available: %s\n", vmep_last_error());
    printf("devices: 0\n");
    print_engine(0);
    return invalid ? 1 : 0;
  }
  printf("CUDA driver: %d.%d\n", driver / 1000, (driver % 1000) / 10);
  st = vmep_device_count(&count);
  if (st != VMEP_OK) {
    printf("devices: unknown (%s)\n", vmep_last_error());
    return 1;
  }
  printf("devices: %d\n", count);
  int failed = 0;
  for (int d = 0; d < count; d++)
    failed |= print_device(d);
  print_engine(count);
  return failed || invalid ? 1 : 0;
}
