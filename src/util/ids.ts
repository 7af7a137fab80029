// Template names; sandbox ids live with the protocol (re-exported here for older importers).
export { randomId, SANDBOX_ID_RE } from '../protocol/ids.js';

export const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
