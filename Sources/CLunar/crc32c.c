#include "CLunar.h"
#include <pthread.h>

// CRC32C (Castagnoli, reflected polynomial 0x82F63B78). Callers pass and receive the
// finalised value: lunar_crc32c(0, data, len) is the standard CRC32C of data.

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

uint32_t lunar_crc32c_table(uint32_t crc, const void *data, size_t len) {
    pthread_once(&table_once, build_table);
    const uint8_t *p = data;
    crc = ~crc;
    while (len >= 8) {  // slicing-by-8
        uint64_t v;
        __builtin_memcpy(&v, p, 8);
        v ^= crc;
        crc = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^ table[5][(v >> 16) & 0xff] ^
              table[4][(v >> 24) & 0xff] ^ table[3][(v >> 32) & 0xff] ^ table[2][(v >> 40) & 0xff] ^
              table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = data;
    uint64_t c = ~crc;
    while (len >= 8) {
        uint64_t v;
        __builtin_memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}

int lunar_crc32c_is_hardware(void) { return __builtin_cpu_supports("sse4.2"); }

uint32_t lunar_crc32c(uint32_t crc, const void *data, size_t len) {
    return __builtin_cpu_supports("sse4.2") ? crc32c_sse42(crc, data, len) : lunar_crc32c_table(crc, data, len);
}
#else
int lunar_crc32c_is_hardware(void) { return 0; }
uint32_t lunar_crc32c(uint32_t crc, const void *data, size_t len) { return lunar_crc32c_table(crc, data, len); }
#endif
