// RUN: %ckec %S/Inputs/batch4.cke --emit=mlir --phase decode --pass-pipeline=shape-infer | filecheck %s
// RUN: %ckec %S/Inputs/batch4.cke --emit=mlir --phase decode | filecheck %s --check-prefix=PLAN
// `batch 4` (Inputs/batch4.cke, one node): the decode program takes up to 4 rows a step, each
// the next token of its own sequence.  Its entry block takes one position a row, KV caches of
// 4 slots (slot outermost: memref<slots x layers x context x kv_dim>) and the slot of each
// row; rows are `?` as in prefill, bounded by max_tokens = slots = 4.  Row-wise ops and
// matmuls are prefill's; rope rotates row t by pos[t]; attention stores row t's key and value
// at cache[slots[t], layer, pos[t]] and attends over that slot's rows 0..pos[t]; there is no
// cke.last_token (every row is a sequence's last token), and argmax gives one id a row.

// CHECK-LABEL: "cke.func"
// CHECK: ^bb0(%arg0: tensor<?xi32>, %arg1: tensor<?xi64>, %arg2: memref<4x1x16x32xf32>, %arg3: memref<4x1x16x32xf32>, %arg4: tensor<?xi32>):
// CHECK: %[[X:.*]] = "cke.embed"(%arg0, %{{.*}}) : (tensor<?xi32>, tensor<64x64xf32>) -> tensor<?x64xf32>
// CHECK: %[[H:.*]] = "cke.rmsnorm"(%[[X]], %{{.*}}) {{.*}}layer = 0 : i64{{.*}} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
// CHECK: %[[Q0:.*]] = "cke.matmul"(%[[H]], %{{.*}}) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
// CHECK: %[[Q:.*]] = "cke.rope"(%[[Q0]], %arg1) {{.*}} : (tensor<?x64xf32>, tensor<?xi64>) -> tensor<?x64xf32>
// CHECK: %[[K0:.*]] = "cke.matmul"(%[[H]], %{{.*}}) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
// CHECK: %[[K:.*]] = "cke.rope"(%[[K0]], %arg1) {{.*}} : (tensor<?x32xf32>, tensor<?xi64>) -> tensor<?x32xf32>
// CHECK: %[[V:.*]] = "cke.matmul"(%[[H]], %{{.*}}) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<32x64xf32>) -> tensor<?x32xf32>
// CHECK: %[[A:.*]] = "cke.attention"(%[[Q]], %[[K]], %[[V]], %arg2, %arg3, %arg1, %arg4) {head_dim = 32 : i64, heads = 2 : i64, kv_heads = 1 : i64, layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x32xf32>, tensor<?x32xf32>, memref<4x1x16x32xf32>, memref<4x1x16x32xf32>, tensor<?xi64>, tensor<?xi32>) -> tensor<?x64xf32>
// CHECK: %[[O:.*]] = "cke.matmul"(%[[A]], %{{.*}}) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
// CHECK: %[[R:.*]] = "cke.add"(%[[X]], %[[O]]) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
// CHECK: "cke.silu_mul"({{.*}}) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
// CHECK: %[[Y:.*]] = "cke.add"(%[[R]], %{{.*}}) {layer = 0 : i64} : (tensor<?x64xf32>, tensor<?x64xf32>) -> tensor<?x64xf32>
// CHECK-NOT: cke.last_token
// CHECK: %[[N:.*]] = "cke.rmsnorm"(%[[Y]], %{{.*}}) {eps = {{.*}}} : (tensor<?x64xf32>, tensor<64xf32>) -> tensor<?x64xf32>
// CHECK: %[[L:.*]] = "cke.matmul"(%[[N]], %{{.*}}) : (tensor<?x64xf32>, tensor<64x64xf32>) -> tensor<?x64xf32>
// CHECK: %[[T:.*]] = "cke.argmax"(%[[L]]) : (tensor<?x64xf32>) -> tensor<?xi32>
// CHECK: "cke.return"(%[[T]], %[[L]]) : (tensor<?xi32>, tensor<?x64xf32>) -> ()
// CHECK: }) {max_tokens = 4 : i64, phase = "decode", slots = 4 : i64, sym_name = "decode"} : () -> ()

// The default pipeline: weights quantized, one rank, buffers of 4 rows of 64 floats (1024
// bytes) in the arena.
// PLAN: "mem.arena"() {alignment = 64 : i64, buffers = {{[0-9]+}} : i64, bytes = 4096 : i64}
// PLAN: "cke.embed"(%arg0, %{{.*}}) {offset = {{[0-9]+}} : i64} : (tensor<?xi32>, tensor<64x64x!cke.q8_0>) -> tensor<?x64xf32>
// PLAN: "cke.attention"({{.*}}, memref<4x1x16x32xf32>, memref<4x1x16x32xf32>, tensor<?xi64>, tensor<?xi32>) -> tensor<?x64xf32>
// PLAN: "cke.argmax"({{.*}}) {offset = {{[0-9]+}} : i64} : (tensor<?x64xf32>) -> tensor<?xi32>
// PLAN: }) {arena_bytes = 4096 : i64, group = array<i64: 0>, layers = array<i64: 0, 0>, max_tokens = 4 : i64, phase = "decode", rank = 0 : i64, slots = 4 : i64, stage = 0 : i64, sym_name = "decode"}
