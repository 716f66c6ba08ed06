fn main() -> std::process::ExitCode {
    schedrig::cli::main()
}
