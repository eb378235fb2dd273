/* The answer table the accelerator (accel.c) maps, as bench/bench_accel.py writes it:
 *
 *     magic "PCACCEL1", nslots:u32 (a power of two), reserved:u32,
 *     slots: nslots x u32, the offset of a record from the start (0: empty),
 *            open addressing from fnv1a(key) ^ follow, linear probing
 *     records, as the kept answers hold them (tracer/memo.py):
 *            kind 'A' follow:u8 keylen:u16 paylen:u32 key
 *            payload = err:i32 parts:u8 [struct stat][access 8][link...]
 *
 * All little-endian, as the machine the supervisor and the job share. */
#ifndef PC_ACCEL_H
#define PC_ACCEL_H

#define ACCEL_MAGIC "PCACCEL1"
#define ACCEL_HEAD 16
#define ACCEL_STAT 1
#define ACCEL_ACCESS 4
#define ACCEL_LINK 8

#endif
