//! Rebuild when a migration changes: the SQL files under migrations/ are embedded in the binary
//! (src/store/mod.rs), and cargo does not track files read by `include_dir!` on its own.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
