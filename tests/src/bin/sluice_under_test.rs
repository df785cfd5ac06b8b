//! The gateway binary as the integration tests run it: the same entry point as `sluice`, built in
//! this package so that tests find it through `CARGO_BIN_EXE_sluice-under-test`.

#[global_allocator]
static GLOBAL: sluice::alloc::Allocator = sluice::alloc::Allocator;

fn main() {
    std::process::exit(sluice::cli::main());
}
