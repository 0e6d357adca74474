// RUN: %ckec opt %s --pass-pipeline=plan-memory | filecheck %s
// plan-memory gives each intermediate an arena offset by liveness: %a and %b are both live at
// the add, so they get different bytes; %c is defined at the add (which still reads %a and
// %b), so it needs a third buffer; %d is defined after %a and %b died and reuses offset 0.
// Sizes are rounded up to 64 bytes: 1x24 f32 = 96 B -> 128 B.

// CHECK: "mem.arena"() {alignment = 64 : i64, buffers = 4 : i64, bytes = 384 : i64}
// CHECK: "cke.embed"{{.*}}{offset = 0 : i64}
// CHECK: "cke.embed"{{.*}}{offset = 128 : i64}
// CHECK: "cke.add"{{.*}}{offset = 256 : i64}
// CHECK: "cke.add"{{.*}}{offset = 0 : i64}
// CHECK: arena_bytes = 384 : i64
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<1xi32>, %pos: i64, %kc: memref<1x16x8xf32>, %vc: memref<1x16x8xf32>):
    %t = "cke.weight"() {name = "t", shape = array<i64: 10, 24>} : () -> tensor<10x24xf32>
    %a = "cke.embed"(%ids, %t) : (tensor<1xi32>, tensor<10x24xf32>) -> tensor<1x24xf32>
    %b = "cke.embed"(%ids, %t) : (tensor<1xi32>, tensor<10x24xf32>) -> tensor<1x24xf32>
    %c = "cke.add"(%a, %b) : (tensor<1x24xf32>, tensor<1x24xf32>) -> tensor<1x24xf32>
    %d = "cke.add"(%c, %c) : (tensor<1x24xf32>, tensor<1x24xf32>) -> tensor<1x24xf32>
    "cke.return"(%d) : (tensor<1x24xf32>) -> ()
  }) {phase = "decode", sym_name = "decode"} : () -> ()
}) : () -> ()
