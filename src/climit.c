/* climit: the per-client limit table. One mmap of entries x 32 bytes, never resized; a lookup
 * hashes the address once with a per-table SipHash key and probes at most CLIMIT_WINDOW slots;
 * a release is an index. Buckets refill lazily at each visit from the elapsed milliseconds, in
 * exact integer 1/1000-token steps, so a client's allowance never drifts. */
#include "uproxy/climit.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

#include "uproxy/util.h"

#define MILLI 1000u /* bucket units per token: rate r adds exactly r units per millisecond */

/* One client. deficit counts the bucket's missing units (0: full), so a zeroed entry is an
 * unused one: the mapping needs no initialisation and its pages stay untouched until used. */
struct climit_entry {
	uint8_t addr[16]; /* IPv6, or IPv4 as ::ffff:a.b.c.d */
	uint64_t last_ms; /* when deficit was last brought up to date */
	uint32_t deficit; /* units below a full bucket, 0..cap */
	uint32_t conns;	  /* connections admitted and not yet released */
};

_Static_assert(sizeof(struct climit_entry) == CLIMIT_ENTRY_BYTES, "the header states 32 bytes");

struct climit {
	struct climit_entry *e;
	size_t map_bytes;
	uint32_t n;
	uint32_t window; /* min(CLIMIT_WINDOW, n) */
	uint32_t max_conns;
	uint32_t rate; /* units per ms = tokens per second */
	uint32_t cap;  /* burst x MILLI */
	bool fail_open;
	uint8_t seed[16];
	uint64_t full_admits;
	uint32_t held; /* connections admitted and not released */
};

static const uint8_t v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

/* ---- SipHash-2-4 (Aumasson and Bernstein), the reference algorithm ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

/* Reads 8 little-endian bytes. */
static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* One SipRound over the four state words. */
static void sipround(uint64_t v[4])
{
	v[0] += v[1];
	v[1] = ROTL(v[1], 13);
	v[1] ^= v[0];
	v[0] = ROTL(v[0], 32);
	v[2] += v[3];
	v[3] = ROTL(v[3], 16);
	v[3] ^= v[2];
	v[0] += v[3];
	v[3] = ROTL(v[3], 21);
	v[3] ^= v[0];
	v[2] += v[1];
	v[1] = ROTL(v[1], 17);
	v[1] ^= v[2];
	v[2] = ROTL(v[2], 32);
}

uint64_t climit_siphash(const uint8_t key[16], const void *p, size_t n)
{
	const uint8_t *in = p;
	uint64_t k0 = le64(key), k1 = le64(key + 8), m;
	uint64_t v[4] = { k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL,
			  k0 ^ 0x6c7967656e657261ULL, k1 ^ 0x7465646279746573ULL };
	size_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		m = le64(in + i);
		v[3] ^= m;
		sipround(v);
		sipround(v);
		v[0] ^= m;
	}
	m = (uint64_t)(n & 0xff) << 56;
	for (size_t j = 0; i + j < n; j++)
		m |= (uint64_t)in[i + j] << (8 * j);
	v[3] ^= m;
	sipround(v);
	sipround(v);
	v[0] ^= m;
	v[2] ^= 0xff;
	for (int r = 0; r < 4; r++)
		sipround(v);
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* ---- the table ---- */

/* The 16-byte key of client, IPv4 as IPv4-mapped IPv6; false for a family without one. */
static bool client_key(const struct sockaddr *sa, uint8_t key[16])
{
	if (sa == NULL)
		return false;
	if (sa->sa_family == AF_INET) {
		memcpy(key, v4mapped_prefix, sizeof(v4mapped_prefix));
		memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		memcpy(key, ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr, 16);
		return true;
	}
	return false;
}

/* The bucket's deficit at now: the stored one minus what the elapsed milliseconds refilled. */
static uint32_t deficit_at(const struct climit *t, const struct climit_entry *e, uint64_t now)
{
	uint64_t elapsed, refill;

	if (e->deficit == 0 || now <= e->last_ms)
		return e->deficit;
	elapsed = now - e->last_ms;
	if (elapsed >= t->cap) /* rate >= 1 unit/ms: more than enough to refill cap units */
		return 0;
	refill = elapsed * t->rate; /* < 2^30 x 2^20 */
	return refill >= e->deficit ? 0 : e->deficit - (uint32_t)refill;
}

/* True if e carries no information at now: nothing open, bucket full (or no rate limit). */
static bool reusable(const struct climit *t, const struct climit_entry *e, uint64_t now)
{
	return e->conns == 0 && (t->rate == 0 || deficit_at(t, e, now) == 0);
}

struct climit *climit_new_seeded(uint32_t entries, uint32_t max_conns, uint32_t rate,
				 uint32_t burst, bool fail_open, const uint8_t seed[16])
{
	struct climit *t;
	void *map;

	if (entries == 0 || entries > CLIMIT_MAX_ENTRIES || rate > CLIMIT_MAX_RATE ||
	    burst > CLIMIT_MAX_RATE) {
		errno = EINVAL;
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		return NULL;
	t->map_bytes = (size_t)entries * sizeof(struct climit_entry);
	/* Anonymous memory is zeroed and page-aligned: every entry starts unused, and pages
	 * are only made resident by the addresses that use them. */
	map = mmap(NULL, t->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED) {
		free(t);
		errno = ENOMEM;
		return NULL;
	}
	t->e = map;
	t->n = entries;
	t->window = entries < CLIMIT_WINDOW ? entries : CLIMIT_WINDOW;
	t->max_conns = max_conns;
	t->rate = rate;
	t->cap = (burst ? burst : rate) * MILLI;
	t->fail_open = fail_open;
	memcpy(t->seed, seed, sizeof(t->seed));
	return t;
}

struct climit *climit_new(uint32_t entries, uint32_t max_conns, uint32_t rate, uint32_t burst,
			  bool fail_open)
{
	uint8_t seed[16];

	/* Without entropy (very early boot) a clock-derived key still differs per start; a
	 * client that cannot see the process cannot guess it to aim collisions. */
	if (getrandom(seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
		uint64_t a = monotonic_us(), b = (uint64_t)(uintptr_t)seed ^ (a << 17);

		memcpy(seed, &a, 8);
		memcpy(seed + 8, &b, 8);
	}
	return climit_new_seeded(entries, max_conns, rate, burst, fail_open, seed);
}

void climit_free(struct climit *t)
{
	if (t == NULL)
		return;
	munmap(t->e, t->map_bytes);
	free(t);
}

/* The first slot of key's window: the hash's high 32 bits scaled to n (no modulo bias worth
 * naming, no division). */
static uint32_t window_start(const struct climit *t, const uint8_t key[16])
{
	uint64_t h = climit_siphash(t->seed, key, 16);

	return (uint32_t)(((h >> 32) * t->n) >> 32);
}

/* The slot holding key, or CLIMIT_NO_SLOT; *free_slot gets the window's first reusable slot
 * (CLIMIT_NO_SLOT if none). */
static uint32_t lookup(const struct climit *t, const uint8_t key[16], uint64_t now,
		       uint32_t *free_slot)
{
	uint32_t i = window_start(t, key);

	*free_slot = CLIMIT_NO_SLOT;
	for (uint32_t k = 0; k < t->window; k++, i = i + 1 == t->n ? 0 : i + 1) {
		const struct climit_entry *e = &t->e[i];

		if (memcmp(e->addr, key, 16) == 0)
			return i;
		if (*free_slot == CLIMIT_NO_SLOT && reusable(t, e, now))
			*free_slot = i;
	}
	return CLIMIT_NO_SLOT;
}

enum climit_verdict climit_admit(struct climit *t, const struct sockaddr *client, uint64_t now_ms,
				 uint32_t *slot_out)
{
	struct climit_entry *e;
	uint8_t key[16];
	uint32_t slot, free_slot;

	*slot_out = CLIMIT_NO_SLOT;
	if (!client_key(client, key))
		return CLIMIT_OK;
	slot = lookup(t, key, now_ms, &free_slot);
	if (slot == CLIMIT_NO_SLOT) {
		if (free_slot == CLIMIT_NO_SLOT) {
			if (!t->fail_open)
				return CLIMIT_TABLE_FULL_REFUSED;
			t->full_admits++;
			return CLIMIT_OK;
		}
		slot = free_slot;
		e = &t->e[slot];
		memcpy(e->addr, key, 16);
		e->conns = 0;
		e->deficit = 0;
		e->last_ms = now_ms;
	}
	e = &t->e[slot];
	if (e->deficit > t->cap)
		e->deficit = t->cap; /* the limits were lowered (climit_set_limits) */
	if (t->max_conns != 0 && e->conns >= t->max_conns)
		return CLIMIT_OVER_CONNS;
	if (t->rate != 0) {
		e->deficit = deficit_at(t, e, now_ms);
		if (now_ms > e->last_ms)
			e->last_ms = now_ms;
		if (t->cap - e->deficit < MILLI)
			return CLIMIT_OVER_RATE;
		e->deficit += MILLI;
	}
	e->conns++;
	t->held++;
	*slot_out = slot;
	return CLIMIT_OK;
}

void climit_release(struct climit *t, uint32_t slot)
{
	if (slot < t->n && t->e[slot].conns > 0) {
		t->e[slot].conns--;
		t->held--;
	}
}

void climit_set_limits(struct climit *t, uint32_t max_conns, uint32_t rate, uint32_t burst,
		       bool fail_open)
{
	t->max_conns = max_conns;
	t->rate = rate;
	t->cap = (burst ? burst : rate) * MILLI;
	t->fail_open = fail_open;
}

uint32_t climit_held(const struct climit *t)
{
	return t->held;
}

uint64_t climit_full_admits(const struct climit *t)
{
	return t->full_admits;
}

uint32_t climit_conns(const struct climit *t, const struct sockaddr *client)
{
	uint8_t key[16];
	uint32_t slot, free_slot;

	if (!client_key(client, key))
		return 0;
	slot = lookup(t, key, 0, &free_slot);
	return slot == CLIMIT_NO_SLOT ? 0 : t->e[slot].conns;
}

uint32_t climit_entries(const struct climit *t)
{
	return t->n;
}

size_t climit_bytes(const struct climit *t)
{
	return t->map_bytes + sizeof(*t);
}

const char *climit_verdict_name(enum climit_verdict v)
{
	switch (v) {
	case CLIMIT_OK:
		return "ok";
	case CLIMIT_OVER_CONNS:
		return "conns";
	case CLIMIT_OVER_RATE:
		return "rate";
	case CLIMIT_TABLE_FULL_REFUSED:
		return "table";
	}
	return "?";
}
