//! `kubectl-deployctl`: the same program as `deployctl`, under the name `kubectl` looks for
//! on `PATH`, so that `kubectl deployctl ...` works.

fn main() -> std::process::ExitCode {
    deployctl::main()
}
