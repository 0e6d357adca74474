// RUN: %ckec opt %s --pass-pipeline=plan-memory | filecheck %s
// plan-memory sizes a window-bounded KV cache.  Layers 0 and 1 attend to their last 4 keys
// (window 4), layer 2 to its whole context of 64.  A prefill call stores up to 8 rows
// (max_tokens), so a sliding layer keeps a ring of 4 + 8 - 1 = 11 rows (kv_rows): a call's
// last row, at p + 7, lands in row (p + 7) mod 11, never on the keys p - 3 .. p its first
// row still reads.  The layers' extents are packed in layer order (kv_row 0, 11, 22) and
// the func's cache holds 11 + 11 + 64 = 86 rows (kv_rows) instead of 3 x 64 = 192.  The
// decode func stores one row a call, yet lays its cache out as prefill does: the two
// programs share one cache, so T is the module's largest call (8).

// CHECK-LABEL: "cke.func"
// CHECK: "cke.attention"{{.*}} {head_dim = 8 : i64, heads = 1 : i64, kv_heads = 1 : i64, kv_row = 0 : i64, kv_rows = 11 : i64, layer = 0 : i64, offset = {{[0-9]+}} : i64, window = 4 : i64}
// CHECK: "cke.attention"{{.*}} {head_dim = 8 : i64, heads = 1 : i64, kv_heads = 1 : i64, kv_row = 11 : i64, kv_rows = 11 : i64, layer = 1 : i64, offset = {{[0-9]+}} : i64, window = 4 : i64}
// CHECK: "cke.attention"{{.*}} {head_dim = 8 : i64, heads = 1 : i64, kv_heads = 1 : i64, kv_row = 22 : i64, layer = 2 : i64, offset = {{[0-9]+}} : i64}
// CHECK: arena_bytes = {{[0-9]+}} : i64, kv_rows = 86 : i64, max_tokens = 8 : i64, phase = "prefill"
// CHECK-LABEL: "cke.func"
// CHECK: "cke.attention"{{.*}} kv_row = 0 : i64, kv_rows = 11 : i64, layer = 0 : i64
// CHECK: "cke.attention"{{.*}} kv_row = 11 : i64, kv_rows = 11 : i64, layer = 1 : i64
// CHECK: "cke.attention"{{.*}} kv_row = 22 : i64, layer = 2 : i64
// CHECK: arena_bytes = {{[0-9]+}} : i64, kv_rows = 86 : i64, phase = "decode"
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<?xi32>, %pos: i64, %kc: memref<3x64x8xf32>, %vc: memref<3x64x8xf32>):
    %t = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 32, 8>} : () -> tensor<32x8xf32>
    %x = "cke.embed"(%ids, %t) : (tensor<?xi32>, tensor<32x8xf32>) -> tensor<?x8xf32>
    %a0 = "cke.attention"(%x, %x, %x, %kc, %vc, %pos) {head_dim = 8 : i64, heads = 1 : i64, kv_heads = 1 : i64, layer = 0 : i64, window = 4 : i64} : (tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>, memref<3x64x8xf32>, memref<3x64x8xf32>, i64) -> tensor<?x8xf32>
    %a1 = "cke.attention"(%a0, %a0, %a0, %kc, %vc, %pos) {head_dim = 8 : i64, heads = 1 : i64, kv_heads = 1 : i64, layer = 1 : i64, window = 4 : i64} : (tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>, memref<3x64x8xf32>, memref<3x64x8xf32>, i64) -> tensor<?x8xf32>
    %a2 = "cke.attention"(%a1, %a1, %a1, %kc, %vc, %pos) {head_dim = 8 : i64, heads = 1 : i64, kv_heads = 1 : i64, layer = 2 : i64} : (tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>, memref<3x64x8xf32>, memref<3x64x8xf32>, i64) -> tensor<?x8xf32>
    "cke.return"(%a2) : (tensor<?x8xf32>) -> ()
  }) {max_tokens = 8 : i64, phase = "prefill", sym_name = "prefill"} : () -> ()
  "cke.func"() ({
  ^bb0(%ids: tensor<1xi32>, %pos: i64, %kc: memref<3x64x8xf32>, %vc: memref<3x64x8xf32>):
    %t = "cke.weight"() {name = "token_embd.weight", shape = array<i64: 32, 8>} : () -> tensor<32x8xf32>
    %x = "cke.embed"(%ids, %t) : (tensor<1xi32>, tensor<32x8xf32>) -> tensor<1x8xf32>
    %a0 = "cke.attention"(%x, %x, %x, %kc, %vc, %pos) {head_dim = 8 : i64, heads = 1 : i64, kv_heads = 1 : i64, layer = 0 : i64, window = 4 : i64} : (tensor<1x8xf32>, tensor<1x8xf32>, tensor<1x8xf32>, memref<3x64x8xf32>, memref<3x64x8xf32>, i64) -> tensor<1x8xf32>
    %a1 = "cke.attention"(%a0, %a0, %a0, %kc, %vc, %pos) {head_dim = 8 : i64, heads = 1 : i64, kv_heads = 1 : i64, layer = 1 : i64, window = 4 : i64} : (tensor<1x8xf32>, tensor<1x8xf32>, tensor<1x8xf32>, memref<3x64x8xf32>, memref<3x64x8xf32>, i64) -> tensor<1x8xf32>
    %a2 = "cke.attention"(%a1, %a1, %a1, %kc, %vc, %pos) {head_dim = 8 : i64, heads = 1 : i64, kv_heads = 1 : i64, layer = 2 : i64} : (tensor<1x8xf32>, tensor<1x8xf32>, tensor<1x8xf32>, memref<3x64x8xf32>, memref<3x64x8xf32>, i64) -> tensor<1x8xf32>
    "cke.return"(%a2) : (tensor<1x8xf32>) -> ()
  }) {phase = "decode", sym_name = "decode"} : () -> ()
}) : () -> ()
