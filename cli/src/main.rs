fn main() {
    eprintln!("mla: the command-line tool is being built; see README.md");
    std::process::exit(2);
}
