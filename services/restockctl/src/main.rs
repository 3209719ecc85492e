//! restockctl: work in progress, see its issue.

fn main() {
    eprintln!("restockctl is not built yet");
    std::process::exit(2);
}
