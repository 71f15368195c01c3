/* One SME outer product of each kind on this (emulated) CPU, against plain C: the int8
 * SMOPA (4-way, int8 x int8 -> int32 into ZA) that XNNPACK's int8 SME kernels use, and the
 * fp32 FMOPA of its fp32 ones. Evidence for docs/arm64.md (the `max`-core false matches).
 *
 *   aarch64-linux-gnu-gcc -O1 -static -o mopa scripts/arm64_sme_mopa.c   (apt: gcc-aarch64-linux-gnu)
 *   QEMU_CPU=max qemu-aarch64-static ./mopa        exit 1 and the wrong elements on qemu 7.2
 *   QEMU_CPU=max,sme-default-vector-length=64 ...  the same at another streaming vector length
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t svl_bytes(void) {
    uint64_t v;
    asm volatile(".arch armv8-a+sme\n\trdsvl %0, #1" : "=r"(v));
    return v;
}

/* za0.s = 0; za0.s += SMOPA(a, b) (int8 x int8 -> int32, 4-way); rows of za0.s stored to out */
static void smopa_i8(const int8_t *a, const int8_t *b, int32_t *out, uint64_t svl) {
    int32_t *o = out;
    asm volatile(
        ".arch armv8-a+sme\n\t"
        "smstart\n\t"
        "zero {za}\n\t"
        "ptrue p0.b\n\t"
        "ld1b {z0.b}, p0/z, [%[a]]\n\t"
        "ld1b {z1.b}, p0/z, [%[b]]\n\t"
        "smopa za0.s, p0/m, p0/m, z0.b, z1.b\n\t"
        "ptrue p1.s\n\t"
        "mov w12, #0\n"
        "1:\n\t"
        "st1w {za0h.s[w12, 0]}, p1, [%[o]]\n\t"
        "add %[o], %[o], %[svl]\n\t"
        "add w12, w12, #1\n\t"
        "cmp x12, %[n]\n\t"
        "b.lt 1b\n\t"
        "smstop\n\t"
        : [o] "+r"(o)
        : [a] "r"(a), [b] "r"(b), [svl] "r"(svl), [n] "r"(svl / 4)
        : "x12", "memory", "cc");
}

/* the same with FMOPA (fp32 x fp32 -> fp32, non-widening) */
static void fmopa_f32(const float *a, const float *b, float *out, uint64_t svl) {
    float *o = out;
    asm volatile(
        ".arch armv8-a+sme\n\t"
        "smstart\n\t"
        "zero {za}\n\t"
        "ptrue p0.s\n\t"
        "ld1w {z0.s}, p0/z, [%[a]]\n\t"
        "ld1w {z1.s}, p0/z, [%[b]]\n\t"
        "fmopa za0.s, p0/m, p0/m, z0.s, z1.s\n\t"
        "mov w12, #0\n"
        "1:\n\t"
        "st1w {za0h.s[w12, 0]}, p0, [%[o]]\n\t"
        "add %[o], %[o], %[svl]\n\t"
        "add w12, w12, #1\n\t"
        "cmp x12, %[n]\n\t"
        "b.lt 1b\n\t"
        "smstop\n\t"
        : [o] "+r"(o)
        : [a] "r"(a), [b] "r"(b), [svl] "r"(svl), [n] "r"(svl / 4)
        : "x12", "memory", "cc");
}

int main(void) {
    uint64_t svl = svl_bytes();
    int n = (int)(svl / 4);
    int8_t a[256], b[256];
    float fa[64], fb[64];
    static int32_t out[64 * 64];
    static float fout[64 * 64];
    srand(7);
    for (uint64_t i = 0; i < svl; i++) {
        a[i] = (int8_t)(rand() % 256 - 128);
        b[i] = (int8_t)(rand() % 256 - 128);
    }
    for (int i = 0; i < n; i++) {
        fa[i] = (float)(rand() % 200 - 100) / 8;
        fb[i] = (float)(rand() % 200 - 100) / 8;
    }
    smopa_i8(a, b, out, svl);
    fmopa_f32(fa, fb, fout, svl);
    int bad_i = 0, bad_f = 0, zero_i = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            int32_t want = 0;
            for (int k = 0; k < 4; k++) want += a[4 * i + k] * b[4 * j + k];
            if (out[i * n + j] != want) {
                if (bad_i < 3) printf("  smopa za0.s[%d][%d] = %d, want %d\n", i, j, out[i * n + j], want);
                bad_i++;
            }
            zero_i += out[i * n + j] == 0;
            if (fout[i * n + j] != fa[i] * fb[j]) bad_f++;
        }
    printf("SVL %d bits: SMOPA int8->int32 %d/%d elements wrong (%d zero); FMOPA fp32 %d/%d wrong\n",
           (int)svl * 8, bad_i, n * n, zero_i, bad_f, n * n);
    return bad_i || bad_f;
}
