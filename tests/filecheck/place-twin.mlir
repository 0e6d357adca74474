// RUN: python -c "from ckeir.api import Program; print(Program('%S/Inputs/q8_pair.cke', schedule='q8', backend='reference', single_rank=True, pipeline='shape-infer,place').mlir())" | filecheck %s
// place's single-rank twin (`single_rank`, what --check-parity compares a distributed run
// with) under `quantize transfers q8_0`: everything runs on rank 0, and each value the
// distributed plan would send between stages is rounded through Q8_0 (cke.requant) for the
// later stage's uses only.  (`ckec opt` has no option for the twin: the API builds it.)
//
// Prefill is one tensor-parallel stage in the distributed plan: no hop, nothing rounded.
// CHECK-LABEL: "cke.func"
// CHECK-NOT: "cke.requant"
// CHECK: phase = "prefill", rank = 0 : i64, stage = 0 : i64, sym_name = "prefill"
//
// Decode is a pipeline n0 | n1: layer 0's output crosses the hop.  Layer 0's own residual
// add keeps the f32 value; layer 1 (the next stage) reads the rounded one.
// CHECK: "cke.add"({{.*}}) {layer = 0 : i64}
// CHECK: %[[OUT:[0-9]+]] = "cke.add"(%{{[0-9]+}}, %{{[0-9]+}}) {layer = 0 : i64}
// CHECK-NEXT: %[[ROUNDED:[0-9]+]] = "cke.requant"(%[[OUT]]) {format = "q8_0"} : (tensor<1x64xf32>) -> tensor<1x64xf32>
// CHECK-NEXT: "cke.weight"() {layer = 1 : i64, name = "blk.1.attn_norm.weight"
// CHECK-NEXT: "cke.rmsnorm"(%[[ROUNDED]], %{{[0-9]+}}) {{.*}}layer = 1 : i64
// CHECK: "cke.add"(%[[ROUNDED]], %{{[0-9]+}}) {layer = 1 : i64}
// CHECK-NOT: "cke.requant"
// CHECK: phase = "decode", rank = 0 : i64, stage = 0 : i64, sym_name = "decode"
