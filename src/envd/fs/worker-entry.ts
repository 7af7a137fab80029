// Entry of dist/envd/fs-worker.mjs (see worker-main.ts).
import { runFsWorker } from './worker-main.js';

runFsWorker();
