// FASTADAPT_VECTOR_CLONES: a loop compiled for AVX-512, AVX2 and the baseline and picked at run time
// where GCC can (x86-64 with glibc's IFUNC); elsewhere (Arm, clang, musl, macOS) once for the build's
// target. The extension is otherwise built for the baseline x86-64 (SSE2).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define FASTADAPT_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTADAPT_VECTOR_CLONES
#endif
