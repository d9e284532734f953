//! Builds bindings to the system's DPDK 22.11 (found by pkg-config) and the C
//! shim that exposes DPDK's static inline fast-path functions.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/shim.c");

    // Struct layouts are baked in at build time: accept only the 22.11 series.
    let lib = pkg_config::Config::new()
        .range_version("22.11".."22.12")
        .cargo_metadata(true)
        .probe("libdpdk")
        .unwrap_or_else(|e| panic!("DPDK 22.11 not found by pkg-config (apt-get install libdpdk-dev): {e}"));

    // The pkg-config crate drops `-include rte_config.h -march=corei7`; take the
    // flags verbatim so cc and bindgen see exactly what DPDK was built for.
    let cflags = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .expect("run pkg-config --cflags libdpdk");
    let cflags: Vec<String> = String::from_utf8_lossy(&cflags.stdout).split_whitespace().map(str::to_owned).collect();

    let mut build = cc::Build::new();
    build.file("shim/shim.c").include("shim").opt_level(3).warnings(false);
    for flag in &cflags {
        build.flag(flag);
    }
    build.compile("ringlb_dpdk_shim");
    // Link the shim's DPDK dependencies after it.
    for l in &lib.libs {
        println!("cargo:rustc-link-lib={l}");
    }

    let bindings = bindgen::Builder::default()
        .header("shim/shim.h")
        .clang_args(&cflags)
        .clang_arg("-Ishim")
        .allowlist_function("rte_.*|ringlb_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*|RING_F_.*|MEMPOOL_F_.*")
        .blocklist_item("per_lcore_.*")
        .opaque_type("rte_arp_ipv4|rte_arp_hdr|rte_l2tpv2_combined_msg_hdr|rte_gtp_psc_generic_hdr")
        .default_enum_style(bindgen::EnumVariation::NewType { is_bitfield: false, is_global: false })
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .expect("bindgen failed on shim/shim.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(out).expect("write bindings");
}
