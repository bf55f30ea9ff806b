//! `csgctl`: send commands to csg-agent gateways and watch their status over MQTT.

fn main() -> std::process::ExitCode {
    csg_console::csgctl::main()
}
