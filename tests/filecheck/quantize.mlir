// RUN: %ckec opt %s --pass-pipeline=quantize --weight-format=q4_1 --weight-except=token_embd | filecheck %s
// RUN: %ckec opt %s --pass-pipeline=quantize --weight-format=q8_0 | filecheck %s --check-prefix=ALL
// quantize rewrites the element type of 2-D weights whose rows are whole 32-element blocks;
// norm gains (1-D) stay f32, and so do excepted weights and rows of 40 (not whole blocks).

// CHECK: "cke.weight"() {name = "token_embd.weight", shape = array<i64: 32, 64>} : () -> tensor<32x64xf32>
// CHECK: "cke.weight"() {name = "blk.0.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
// CHECK: "cke.weight"() {name = "blk.0.attn_q.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64x!cke.q4_1>
// CHECK: "cke.weight"() {name = "odd", shape = array<i64: 8, 40>} : () -> tensor<8x40xf32>
// ALL: "cke.weight"() {name = "token_embd.weight", shape = array<i64: 32, 64>} : () -> tensor<32x64x!cke.q8_0>
// ALL: "cke.weight"() {name = "blk.0.attn_q.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64x!cke.q8_0>
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<1xi32>, %pos: i64, %kc: memref<1x16x8xf32>, %vc: memref<1x16x8xf32>):
    %e = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 32, 64>} : () -> tensor<32x64xf32>
    %n = "cke.weight"() {name = "blk.0.attn_norm.weight", shape = array<i64: 64>} : () -> tensor<64xf32>
    %q = "cke.weight"() {name = "blk.0.attn_q.weight", shape = array<i64: 64, 64>} : () -> tensor<64x64xf32>
    %o = "cke.weight"() {name = "odd", shape = array<i64: 8, 40>} : () -> tensor<8x40xf32>
    "cke.return"(%e, %n, %q, %o) : (tensor<32x64xf32>, tensor<64xf32>, tensor<64x64xf32>, tensor<8x40xf32>) -> ()
  }) {phase = "decode", sym_name = "decode"} : () -> ()
}) : () -> ()
