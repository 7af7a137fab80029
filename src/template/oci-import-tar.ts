// The tar format as image layers use it: ustar, GNU long names and PAX extended headers.
// Reading is streaming (layers can be large); writing covers only the entries the importer
// rewrites. Names are kept as byte strings (latin1) so that no name is ever re-encoded.
//
// The format's building blocks are in oci/tar-format.ts, reading in oci/tar-read.ts and
// writing in oci/tar-write.ts; this module re-exports them.
export { BLOCK, paxRecord, parsePax, tarError, TarFormatError, type EntryType, type TarEntry } from './oci/tar-format.js';
export { ByteReader, indexTarFile, parseTar } from './oci/tar-read.js';
export { encodeEntry, END_OF_ARCHIVE, padding, type NewEntry } from './oci/tar-write.js';
