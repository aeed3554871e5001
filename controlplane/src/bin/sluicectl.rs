//! `sluicectl`: the operator CLI of the Sluice control plane. Everything
//! lives in [`controlplane::ctl`]; exit codes are documented there and in
//! `sluicectl --help`.

fn main() -> std::process::ExitCode {
    controlplane::ctl::main()
}
