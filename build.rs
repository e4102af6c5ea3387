//! Compiles the eBPF fallback's classifier (src/ebpf-fallback/classifier.bpf.c) with clang.
//!
//! Without clang or libbpf's headers the crate still builds, warns, and leaves the object out:
//! the nftables dataplane does not need it, and selecting the eBPF dataplane then fails with
//! an error that says what to install (see README, "Building", and docs/ebpf.md).

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "src/ebpf-fallback/classifier.bpf.c";

fn main() {
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=SLUICE_CLANG");
    println!("cargo::rerun-if-env-changed=SLUICE_NO_EBPF");
    println!("cargo::rustc-check-cfg=cfg(sluice_ebpf_object)");

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("classifier.bpf.o");
    match compile(&object) {
        Ok(()) => println!("cargo::rustc-cfg=sluice_ebpf_object"),
        Err(why) => {
            println!(
                "cargo::warning=eBPF fallback dataplane not built: {why}. \
                 Install clang and libbpf-dev (scripts/install-deps does) to build it."
            );
            println!("cargo::rustc-env=SLUICE_EBPF_MISSING={why}");
        }
    }
}

fn compile(object: &Path) -> Result<(), String> {
    if std::env::var_os("SLUICE_NO_EBPF").is_some() {
        return Err("SLUICE_NO_EBPF is set".into());
    }
    let clang = std::env::var("SLUICE_CLANG").unwrap_or_else(|_| "clang".into());
    // -target bpf has no multiarch include directory; <linux/types.h> needs <asm/types.h>.
    let multiarch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        Ok("arm") => "arm-linux-gnueabihf",
        Ok("riscv64") => "riscv64-linux-gnu",
        Ok("powerpc64") => "powerpc64le-linux-gnu",
        Ok("s390x") => "s390x-linux-gnu",
        _ => "",
    };
    let mut cmd = Command::new(&clang);
    cmd.args([
        "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
    ]);
    let include = Path::new("/usr/include").join(multiarch);
    if !multiarch.is_empty() && include.is_dir() {
        cmd.arg("-I").arg(include);
    }
    cmd.arg("-c").arg(SOURCE).arg("-o").arg(object);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {clang}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("failed")
            .trim()
            .to_string();
        return Err(format!("{clang} could not compile {SOURCE}: {first}"));
    }
    Ok(())
}
