/**
 * Fault injection for crash tests: when the armed fault (configuration's CUBEBOX_FAULT) names
 * this point, the process kills itself with SIGKILL right here, as a crash at this step would.
 */
let armed: string | undefined;

/** Arms the fault point the configuration names (undefined: none). */
export function armFault(name: string | undefined): void {
  armed = name;
}

export function faultPoint(name: string): void {
  if (armed === name) process.kill(process.pid, 'SIGKILL');
}
