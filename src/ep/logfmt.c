/*
 * The host reference of LogFMT rows (docs/EP.md, "LogFMT"): the headers,
 * the bit packing and the whole-row encode and decode that the combine's
 * kernels do with warps, written plainly, over the scalar codec they
 * share (kernels/logfmt.h). Tests and the combine reference use it.
 */
#include <string.h>

#include "ep/reference.h"
#include "kernels/logfmt.h"

uint32_t vmep__logfmt_header(const uint16_t *group) {
  uint16_t amax = 0, amin = 0x7f80; /* +Inf: no nonzero magnitude yet */
  for (int i = 0; i < VMEP_LOGFMT_GROUP; i++) {
    uint16_t mag = group[i] & 0x7fff;
    /* bf16 magnitudes order as their bits; Inf and NaN are skipped */
    if (mag >= 0x7f80)
      continue;
    if (mag > amax)
      amax = mag;
    if (mag != 0 && mag < amin)
      amin = mag;
  }
  return (uint32_t)amax | (uint32_t)amin << 16;
}

/* Field i of a row's bit stream: bits [10 i, 10 i + 10), bit j of the
 * stream being bit j % 8 of byte j / 8. */
static void put_field(uint8_t *codes, size_t i, unsigned field) {
  size_t bit = i * VMEP_LOGFMT_BITS;
  uint32_t shifted = (uint32_t)field << (bit % 8);
  for (size_t b = 0; b * 8 < bit % 8 + VMEP_LOGFMT_BITS; b++)
    codes[bit / 8 + b] |= (uint8_t)(shifted >> (8 * b));
}

static unsigned get_field(const uint8_t *codes, size_t i) {
  size_t bit = i * VMEP_LOGFMT_BITS;
  uint32_t window = 0;
  for (size_t b = 0; b * 8 < bit % 8 + VMEP_LOGFMT_BITS; b++)
    window |= (uint32_t)codes[bit / 8 + b] << (8 * b);
  return (window >> (bit % 8)) & ((1u << VMEP_LOGFMT_BITS) - 1u);
}

void vmep__logfmt_encode_row(const uint16_t *x, int hidden, uint8_t *out) {
  size_t head = vmep_logfmt_header_offset(hidden);
  memset(out, 0, vmep_logfmt_row_bytes(hidden));
  for (int g = 0; g < hidden / VMEP_LOGFMT_GROUP; g++) {
    const uint16_t *in = x + (size_t)g * VMEP_LOGFMT_GROUP;
    uint32_t header = vmep__logfmt_header(in);
    struct vmep_logfmt_group group;
    vmep_logfmt_group_of(header, &group);
    for (int i = 0; i < 4; i++)
      out[head + 4 * (size_t)g + i] = (uint8_t)(header >> (8 * i));
    for (int i = 0; i < VMEP_LOGFMT_GROUP; i++)
      put_field(out, (size_t)g * VMEP_LOGFMT_GROUP + i,
                vmep_logfmt_encode(&group, vmep__bf16_to_float(in[i])));
  }
}

void vmep__logfmt_decode_row(const uint8_t *row, int hidden, float *out) {
  size_t head = vmep_logfmt_header_offset(hidden);
  for (int g = 0; g < hidden / VMEP_LOGFMT_GROUP; g++) {
    uint32_t header = 0;
    for (int i = 0; i < 4; i++)
      header |= (uint32_t)row[head + 4 * (size_t)g + i] << (8 * i);
    struct vmep_logfmt_group group;
    vmep_logfmt_levels_of(header, &group);
    for (int i = 0; i < VMEP_LOGFMT_GROUP; i++) {
      size_t c = (size_t)g * VMEP_LOGFMT_GROUP + i;
      out[c] = vmep_logfmt_decode(&group, get_field(row, c));
    }
  }
}

void vmep__logfmt_round_trip_group(const uint16_t *group, float *out) {
  struct vmep_logfmt_group g;
  vmep_logfmt_group_of(vmep__logfmt_header(group), &g);
  for (int i = 0; i < VMEP_LOGFMT_GROUP; i++)
    out[i] = vmep_logfmt_decode(
        &g, vmep_logfmt_encode(&g, vmep__bf16_to_float(group[i])));
}
