//! `csgctl`: send commands to csg-agent gateways and watch their status over MQTT.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
