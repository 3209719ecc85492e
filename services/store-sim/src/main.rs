//! store-sim: work in progress, see its issue.

fn main() {
    eprintln!("store-sim is not built yet");
    std::process::exit(2);
}
