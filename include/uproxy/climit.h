/* climit: per-client limits of one listener in one worker (max-conns-per-client,
 * rate-per-client/rate-burst): a fixed-size table of client addresses, allocated once, with the
 * open connections and a token bucket of each. No locks: each worker has its own table per
 * listener (steer.h makes every connection of a client land on the same worker, so the limits
 * hold exactly with several workers).
 *
 * Memory: CLIMIT_ENTRY_BYTES (32) bytes per entry: entries x 32 bytes mapped at climit_new
 * (anonymous memory: pages become resident as addresses use them), plus a header under 100
 * bytes. The default 16384 entries cost 512 KiB per listener per worker, the maximum (2^22)
 * 128 MiB. Nothing is allocated afterwards.
 *
 * The table: open addressing, a client's entry lives in the CLIMIT_WINDOW slots that follow
 * siphash(seed, address) (seed random per table, so clients cannot aim collisions). An entry is
 * reusable when it carries no information: no open connection and a full bucket. A new address
 * takes the first reusable slot of its window; with none, the table is "full" for it, and the
 * table's fail_open decides (CLIMIT_OK, counted, or CLIMIT_TABLE_FULL_REFUSED).
 *
 * IPv4 and IPv4-mapped IPv6 (::ffff:a.b.c.d) addresses are the same client. */
#ifndef UPROXY_CLIMIT_H
#define UPROXY_CLIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CLIMIT_ENTRY_BYTES 32u
#define CLIMIT_WINDOW	   8u	      /* slots probed per address: 256 bytes, 4 cache lines */
#define CLIMIT_MAX_ENTRIES (1u << 22) /* = CONFIG_MAX_CLIENT_TABLE: 128 MiB */
#define CLIMIT_MAX_RATE	   1000000u   /* rate and burst bound: the bucket is in 1/1000 tokens */
#define CLIMIT_NO_SLOT	   UINT32_MAX /* admitted without an entry: climit_release ignores it */

enum climit_verdict {
	CLIMIT_OK = 0,		   /* admitted: the caller holds *slot_out until climit_release */
	CLIMIT_OVER_CONNS,	   /* max_conns connections of this client are open */
	CLIMIT_OVER_RATE,	   /* its bucket holds less than one token */
	CLIMIT_TABLE_FULL_REFUSED, /* a new address, no reusable slot, fail closed */
};

struct climit;

/* A table of entries slots (1..CLIMIT_MAX_ENTRIES) for max_conns concurrent connections per
 * client (0: no limit), rate new connections per second per client (0: no limit) with a bucket
 * of burst tokens (0: = rate; both <= CLIMIT_MAX_RATE) and a full table's policy. The seed comes
 * from getrandom(2). Returns NULL with errno set (EINVAL for a bad argument, ENOMEM). */
struct climit *climit_new(uint32_t entries, uint32_t max_conns, uint32_t rate, uint32_t burst,
			  bool fail_open);

/* As climit_new with a fixed seed: tests (collisions, reproducible layouts) only. */
struct climit *climit_new_seeded(uint32_t entries, uint32_t max_conns, uint32_t rate,
				 uint32_t burst, bool fail_open, const uint8_t seed[16]);

void climit_free(struct climit *t);

/* Decides on a new connection of client at now_ms (a monotonic clock; never decreasing for one
 * table). The connection limit is checked first, then the rate: only admitted connections take
 * a token, so a client held at its connection limit does not also drain its bucket. On CLIMIT_OK
 * the caller holds one connection and *slot_out names it (CLIMIT_NO_SLOT when none is held: a
 * full table failing open, or an AF_UNIX / unknown-family client, which is never limited); it
 * must call climit_release(t, *slot_out) exactly once when that connection ends. On any other
 * verdict nothing is held (*slot_out = CLIMIT_NO_SLOT). */
enum climit_verdict climit_admit(struct climit *t, const struct sockaddr *client, uint64_t now_ms,
				 uint32_t *slot_out);

/* Ends a connection admitted with slot (O(1); CLIMIT_NO_SLOT is ignored). */
void climit_release(struct climit *t, uint32_t slot);

/* SIGHUP: new limits for the same table (its size stays). Entries keep their counts; a
 * bucket above the new burst is cut to it. Sessions admitted before keep their slots. */
void climit_set_limits(struct climit *t, uint32_t max_conns, uint32_t rate, uint32_t burst,
		       bool fail_open);

/* Connections admitted and not yet released. */
uint32_t climit_held(const struct climit *t);

/* Connections admitted without an entry because the table was full and fails open. */
uint64_t climit_full_admits(const struct climit *t);

/* Open connections the table holds for client (tests and diagnostics; hashes). */
uint32_t climit_conns(const struct climit *t, const struct sockaddr *client);

/* The table's size in slots and in bytes (what climit_new allocated). */
uint32_t climit_entries(const struct climit *t);
size_t climit_bytes(const struct climit *t);

/* SipHash-2-4 of p[0..n) under key: the table's hash, exposed for its test vectors. */
uint64_t climit_siphash(const uint8_t key[16], const void *p, size_t n);

const char *climit_verdict_name(enum climit_verdict v);

#endif
