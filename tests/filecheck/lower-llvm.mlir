// RUN: %ckec opt %s --pass-pipeline=lower-llvm --emit=llvm | filecheck %s
// lower-llvm makes one native entry per program.  Each op becomes a call of a kernel
// specialized to its shapes (names carry them), operands are ctx slots (weights, inputs) or
// arena offsets from plan-memory.  The scheduler starts the entry's run before anything
// that changes between runs is read; one thread alone runs each op whole, several claim its
// parts until none is left, count each done, and wait for the op's last part.

// CHECK-DAG: define internal void @embed_f32_v10_d24(
// CHECK-DAG: define internal void @add_f32_d24
// CHECK-LABEL: define dso_local void @cke_decode(ptr %ctx, i32 %tid, i32 %nth)
// CHECK: call i64 @cke_begin(
// The arena base is ctx slot 0; buffers are at their offsets.
// CHECK: getelementptr inbounds i8, ptr %{{.*}}, i64 128
// CHECK: getelementptr inbounds i8, ptr %{{.*}}, i64 256
// CHECK: call void @embed_f32_v10_d24({{.*}}, i32 0, i32 1)
// CHECK: call i32 @cke_claim(
// CHECK: call void @embed_f32_v10_d24(
// CHECK-NEXT: call void @cke_done(
// CHECK: call void @cke_barrier(
// CHECK: call void @embed_f32_v10_d24({{.*}}, i32 0, i32 1)
// CHECK: call void @cke_barrier(
// CHECK: call void @add_f32_d24{{.*}}({{.*}}, i32 0, i32 1)
// CHECK: call void @add_f32_d24{{.*}}(
// CHECK-NEXT: call void @cke_done(
// CHECK: call void @cke_barrier(
// CHECK: ret void
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<1xi32>, %pos: i64, %kc: memref<1x16x8xf32>, %vc: memref<1x16x8xf32>):
    "mem.arena"() {alignment = 64 : i64, buffers = 3 : i64, bytes = 384 : i64} : () -> ()
    %t = "cke.weight"() {name = "t", shape = array<i64: 10, 24>} : () -> tensor<10x24xf32>
    %a = "cke.embed"(%ids, %t) {offset = 0 : i64} : (tensor<1xi32>, tensor<10x24xf32>) -> tensor<1x24xf32>
    %b = "cke.embed"(%ids, %t) {offset = 128 : i64} : (tensor<1xi32>, tensor<10x24xf32>) -> tensor<1x24xf32>
    %c = "cke.add"(%a, %b) {offset = 256 : i64} : (tensor<1x24xf32>, tensor<1x24xf32>) -> tensor<1x24xf32>
    "cke.return"(%c) : (tensor<1x24xf32>) -> ()
  }) {arena_bytes = 384 : i64, phase = "decode", sym_name = "decode"} : () -> ()
}) : () -> ()
