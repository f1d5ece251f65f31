//! `deployctl`: the command line for ProductionStacks. Everything lives in the library so
//! that the `kubectl-deployctl` plugin binary is the same program.

fn main() -> std::process::ExitCode {
    deployctl::main()
}
