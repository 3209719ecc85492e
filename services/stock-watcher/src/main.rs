//! stock-watcher: work in progress, see its issue.

fn main() {
    eprintln!("stock-watcher is not built yet");
    std::process::exit(2);
}
