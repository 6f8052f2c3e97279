/*
 * Deadlines for the waits of every layer: a monotonic millisecond clock
 * (immune to wall-clock steps) and the time left until a deadline, in the
 * int milliseconds that poll() takes.
 */
#include <limits.h>
#include <time.h>

#include "core/core.h"

uint64_t vmep__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int vmep__ms_left(uint64_t deadline_ms) {
  uint64_t now = vmep__now_ms();
  if (deadline_ms <= now)
    return 0;
  return deadline_ms - now > (uint64_t)INT_MAX ? INT_MAX
                                               : (int)(deadline_ms - now);
}
