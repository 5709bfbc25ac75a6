/* cpuid_mask: run a process as if its x86 CPU had no AVX-512, AVX-VNNI or AMX (an
 * "AVX2-only" CPU such as AMD EPYC Zen 2), on a CPU that has them.
 *
 * Libraries pick their kernels from the CPUID instruction (NumPy, OpenBLAS, ONNX Runtime's
 * MLAS, oneDNN in PyTorch and OpenVINO, libjpeg-turbo). Linux can make CPUID fault in a
 * process (arch_prctl(ARCH_SET_CPUID, 0); the CPU flag is "cpuid_fault"): this library,
 * loaded with LD_PRELOAD, turns faulting on in its constructor, and its SIGSEGV handler
 * runs the real CPUID and clears the feature bits before handing the answer back.
 *
 * Faulting is per thread and inherited by new threads; exec turns it off, and LD_PRELOAD,
 * inherited by children, turns it on again in each new program. A SIGSEGV handler the
 * program installs through sigaction() is kept aside and called for every other fault.
 * Build: cc -O2 -shared -fPIC -o cpuid_mask.so cpuid_mask.c
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012

static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
static struct sigaction app_action;    /* what the program asked for SIGSEGV */
static volatile long trapped;           /* CPUID instructions answered (for the report) */

static long arch_prctl(int code, unsigned long arg) { return syscall(SYS_arch_prctl, code, arg); }

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    /* r = eax, ebx, ecx, edx */
    if (leaf == 7 && sub == 0) {
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28)
                  | (1u << 30) | (1u << 31));                       /* AVX512 F DQ IFMA PF ER CD BW VL */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 8) | (1u << 9) | (1u << 10) | (1u << 11)
                  | (1u << 12) | (1u << 14));                      /* VBMI VBMI2 GFNI VAES VPCLMULQDQ VNNI BITALG VPOPCNTDQ */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24)
                  | (1u << 25));                                    /* 4VNNIW 4FMAPS VP2INTERSECT AMX-BF16 FP16 AMX-TILE AMX-INT8 */
    } else if (leaf == 7 && sub == 1) {
        r[0] = 0;                                                   /* AVX-VNNI, AVX512_BF16, AMX-FP16, AVX-IFMA ... */
        r[3] = 0;                                                   /* AVX-VNNI-INT8, AVX10 ... */
    } else if (leaf == 0xD && sub == 0) {
        r[0] &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18)); /* opmask, ZMM state, AMX tiles */
    } else if (leaf == 0x1D || leaf == 0x1E || leaf == 0x24) {
        r[0] = r[1] = r[2] = r[3] = 0;                              /* AMX tile info, AVX10 */
    }
}

static void on_segv(int sig, siginfo_t *info, void *ctx) {
    ucontext_t *uc = ctx;
    unsigned char *ip = (unsigned char *)uc->uc_mcontext.gregs[REG_RIP];
    if (info->si_code == SI_KERNEL && ip[0] == 0x0F && ip[1] == 0xA2) {
        uint32_t leaf = (uint32_t)uc->uc_mcontext.gregs[REG_RAX];
        uint32_t sub = (uint32_t)uc->uc_mcontext.gregs[REG_RCX];
        uint32_t r[4];
        arch_prctl(ARCH_SET_CPUID, 1);
        __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
        arch_prctl(ARCH_SET_CPUID, 0);
        mask(leaf, sub, r);
        uc->uc_mcontext.gregs[REG_RAX] = r[0];
        uc->uc_mcontext.gregs[REG_RBX] = r[1];
        uc->uc_mcontext.gregs[REG_RCX] = r[2];
        uc->uc_mcontext.gregs[REG_RDX] = r[3];
        uc->uc_mcontext.gregs[REG_RIP] += 2;
        __atomic_add_fetch(&trapped, 1, __ATOMIC_RELAXED);
        return;
    }
    /* not ours: the program's handler, or the default action */
    if (app_action.sa_flags & SA_SIGINFO) {
        if (app_action.sa_sigaction) { app_action.sa_sigaction(sig, info, ctx); return; }
    } else if (app_action.sa_handler != SIG_DFL && app_action.sa_handler != SIG_IGN) {
        app_action.sa_handler(sig);
        return;
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, NULL);  /* the faulting instruction runs again and kills */
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV) return real_sigaction(sig, act, old);
    if (old) *old = app_action;
    if (act) app_action = *act;
    return 0;
}

static void report(void) {
    if (getenv("CPUID_MASK_REPORT"))
        fprintf(stderr, "cpuid_mask: pid %d answered %ld CPUID instructions\n", getpid(), trapped);
}

__attribute__((constructor)) static void start(void) {
    real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    memset(&app_action, 0, sizeof app_action);
    app_action.sa_handler = SIG_DFL;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (real_sigaction(SIGSEGV, &sa, NULL) != 0 || arch_prctl(ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "cpuid_mask: this CPU or kernel can't make CPUID fault (no cpuid_fault)\n");
        _exit(97);
    }
    atexit(report);
}
