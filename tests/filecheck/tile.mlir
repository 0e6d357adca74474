// RUN: %ckec opt %s --pass-pipeline=tile --l2=256KiB --cores=2 | filecheck %s --check-prefix=L2SMALL
// RUN: %ckec opt %s --pass-pipeline=tile --l2=2MiB --cores=1 | filecheck %s --check-prefix=L2BIG
// tile keeps a TN x TK block of weight rows within half of L2 and TN within one thread's rows.
// 1536 x 576 f32: a row is 2304 B.  128 KiB / 2304 B = 56 rows -> 48 (multiple of 16).
// L2SMALL: "cke.matmul"{{.*}}tile = array<i64: 48, 576>
// With 1 MiB for the tile, 455 rows fit -> 448.
// L2BIG: "cke.matmul"{{.*}}tile = array<i64: 448, 576>
// A q8_0 row of 576 is 612 B, so more rows fit: 128 KiB / 612 B = 214 -> 208.
// L2SMALL: "cke.matmul"{{.*}}tile = array<i64: 208, 576>
"builtin.module"() ({
  "cke.func"() ({
  ^bb0(%ids: tensor<1xi32>, %pos: i64, %kc: memref<1x16x8xf32>, %vc: memref<1x16x8xf32>):
    %x = "cke.weight"() {name = "x", shape = array<i64: 1, 576>} : () -> tensor<1x576xf32>
    %w = "cke.weight"() {name = "w", shape = array<i64: 1536, 576>} : () -> tensor<1536x576xf32>
    %y = "cke.matmul"(%x, %w) : (tensor<1x576xf32>, tensor<1536x576xf32>) -> tensor<1x1536xf32>
    %q = "cke.weight"() {name = "q", shape = array<i64: 1536, 576>} : () -> tensor<1536x576x!cke.q8_0>
    %z = "cke.matmul"(%x, %q) : (tensor<1x576xf32>, tensor<1536x576x!cke.q8_0>) -> tensor<1x1536xf32>
    "cke.return"(%y, %z) : (tensor<1x1536xf32>, tensor<1x1536xf32>) -> ()
  }) {phase = "decode", sym_name = "decode"} : () -> ()
}) : () -> ()
