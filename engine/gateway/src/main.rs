//! The `sluice` binary: only wiring; everything lives in the library.

#[global_allocator]
static GLOBAL: sluice::alloc::Allocator = sluice::alloc::Allocator;

fn main() {
    std::process::exit(sluice::cli::main());
}
