"""CPU kinds the tests emulate on whatever machine runs them."""

# An AVX2-only CPU as oneDNN, ATen and MKL see it (set before torch is imported, so in a child process): oneDNN
# then runs its AVX2 kernels and refuses bf16 weight packing, as on the AMD EPYC machines without AVX-512.
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
