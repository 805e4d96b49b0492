/* backend: owns the upstream pool — membership, ids, balancing, health, backups and session
 * counts.
 * It is told the time and every outcome by its caller; it never does I/O, never reads a clock,
 * and never allocates outside backend_pool_new and backend_pool_update. */
#include "uproxy/backend.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

/*
 * Cost per pick. Every policy scans the slots once (random2 three times): smooth weighted round
 * robin needs every eligible weight anyway (nginx does the same), and the scan is also where down
 * and already-tried backends are skipped, so no policy keeps a second structure to keep in step.
 * Measured at 1024 backends (gcc -O2, x86-64, a loaded 2-CPU VM): 2-8 us for every policy,
 * weighted hash included (it takes a logarithm for ~9 of the 1024) — beside a connect() and a
 * TCP handshake, noise; with the handful of upstreams of a usual config, tens of nanoseconds.
 *
 * Hash policy: weighted rendezvous hashing (HRW), not a ketama ring or Maglev, because
 *  - removing a backend moves exactly the clients it had, and adding one moves only the clients
 *    it wins: every other client keeps its backend by construction (Maglev moves a few others);
 *  - weights are exact in expectation: a backend wins with probability weight / total, where
 *    a ring of 160 points per unit of weight leaves a 1-in-4 share spread by +-1.7 points (one
 *    standard deviation) depending on where the points fall;
 *  - a retry or a down backend falls through to the client's own next-best choice, so even the
 *    retries are consistent, and there is no table to rebuild or memory to spend per weight.
 * Its price is O(N) per pick, which the other policies pay too.
 *
 * Backups: a pick first decides which tier it draws from (pool->pick_backup) and the policy
 * then treats the other tier as ineligible, so each policy, hash included, works unchanged
 * within the active set. Deciding costs nothing without backups and, with them, a scan that
 * stops at the first eligible primary (the first slot, as long as the primaries are up): the
 * pick stays O(N) with no second structure. Whether the pool *is on its backups* (for the log
 * line and the metric) is a health state, not a per-pick one: it is recomputed only when an
 * up/down state or the membership changes.
 */

enum slot_state {
	SLOT_FREE = 0, /* id not in use */
	SLOT_LIVE,     /* member of the pool */
	SLOT_REMOVED,  /* no longer a member; sessions still hold the id */
};

/* What a pick reads comes first (the first 48 bytes); the address, read only by updates and
 * accessors, last. */
struct backend {
	uint64_t key;	     /* hash of addr, for HRW; the same in every worker and instance */
	uint64_t down_until; /* meaningful when down */
	int64_t current;     /* smooth round robin credit */
	double inv_weight;   /* 1 / weight, for HRW */
	uint32_t weight;
	uint32_t active;
	uint32_t tried; /* == pool->epoch: in this pick's tried list */
	uint8_t state;	/* enum slot_state */
	bool down;
	bool backup; /* picked only while no primary is eligible */
	uint32_t fails;
	uint64_t picks;
	struct addr addr;
};

struct backend_pool {
	struct backend *b;
	uint32_t cap;	     /* entries allocated in b */
	uint32_t nslots;     /* every id in use is below it */
	uint32_t members;    /* SLOT_LIVE count */
	uint32_t epoch;	     /* marks tried backends during one pick without clearing */
	uint32_t cursor;     /* leastconn's round-robin tie breaker */
	uint32_t backups;    /* SLOT_LIVE members with the backup flag */
	bool uniform;	     /* every member has the same weight: HRW can skip the logarithm */
	bool pick_backup;    /* during a pick: the tier it draws from */
	bool on_backup;	     /* backend_pool_using_backup */
	bool on_backup_told; /* on_backup at the last backend_pool_backup_changed */
	enum backend_balance balance;
	uint32_t fail_threshold;
	uint32_t fail_timeout_ms;
	uint64_t rng;
};

static const char *const balance_names[BALANCE__COUNT] = {
	[BALANCE_ROUNDROBIN] = "roundrobin",
	[BALANCE_LEASTCONN] = "leastconn",
	[BALANCE_RANDOM2] = "random2",
	[BALANCE_HASH] = "hash",
};

int backend_balance_parse(const char *s, enum backend_balance *out)
{
	for (int i = 0; i < BALANCE__COUNT; i++) {
		if (s != NULL && strcmp(s, balance_names[i]) == 0) {
			*out = (enum backend_balance)i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *backend_balance_name(enum backend_balance b)
{
	if ((unsigned int)b >= BALANCE__COUNT)
		return "?";
	return balance_names[b];
}

/* ---- hashing and random numbers ---- */

/* The splitmix64 finaliser: a bijective 64-bit mix with full avalanche. */
static uint64_t backend_mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

/* Fixed, not seeded: every worker and every uproxy instance must send a client to the same
 * backend, whichever connection of it lands where. */
#define BACKEND_HASH_SEED 0x9e3779b97f4a7c15ull

static uint64_t backend_hash_bytes(uint64_t h, const void *p, size_t n)
{
	const uint8_t *c = p;

	while (n > 0) {
		uint64_t w = 0;
		size_t k = n < 8 ? n : 8;

		memcpy(&w, c, k);
		h = backend_mix64(h ^ w ^ ((uint64_t)k << 59));
		c += k;
		n -= k;
	}
	return h;
}

/* The client's IP (never its port). An IPv4-mapped IPv6 address hashes as the IPv4 address, so a
 * dual-stack listener sends a client to the same backend as an IPv4 one. Returns false for any
 * other family. */
static bool backend_client_hash(const struct sockaddr *sa, uint64_t *out)
{
	static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (sa == NULL)
		return false;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;

		*out = backend_hash_bytes(BACKEND_HASH_SEED ^ 4, &in4->sin_addr, 4);
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		const uint8_t *a = in6->sin6_addr.s6_addr;

		if (memcmp(a, v4mapped, sizeof(v4mapped)) == 0)
			*out = backend_hash_bytes(BACKEND_HASH_SEED ^ 4, a + 12, 4);
		else
			*out = backend_hash_bytes(BACKEND_HASH_SEED ^ 6, a, 16);
		return true;
	}
	return false;
}

/* The HRW key of an upstream: its IP and port (and IPv6 scope), or a unix socket's name. */
static uint64_t backend_addr_key(const struct addr *a)
{
	if (a->u.sa.sa_family == AF_UNIX) {
		size_t off = offsetof(struct sockaddr_un, sun_path);

		return backend_hash_bytes(BACKEND_HASH_SEED ^ 1, (const char *)&a->u.sa + off,
					  a->len - off);
	}
	if (a->u.sa.sa_family == AF_INET) {
		uint64_t h = backend_hash_bytes(BACKEND_HASH_SEED ^ 4, &a->u.in4.sin_addr, 4);

		return backend_mix64(h ^ a->u.in4.sin_port);
	} else {
		uint64_t h = backend_hash_bytes(BACKEND_HASH_SEED ^ 6, &a->u.in6.sin6_addr, 16);

		return backend_mix64(h ^ a->u.in6.sin6_port ^
				     ((uint64_t)a->u.in6.sin6_scope_id << 16));
	}
}

/* splitmix64: one add and one mix per number, good enough for choosing among backends. */
static uint64_t backend_rand(struct backend_pool *p)
{
	p->rng += 0x9e3779b97f4a7c15ull;
	return backend_mix64(p->rng);
}

/* Uniform in [0, n) for n < 2^32 (bias below 2^-32 per value). */
static uint32_t backend_rand_below(struct backend_pool *p, uint32_t n)
{
	return (uint32_t)(((backend_rand(p) >> 32) * n) >> 32);
}

/* -log2(h / 2^64) for h >= 1, without libm: the exponent from the leading zeros, the mantissa's
 * logarithm from the atanh series, accurate to ~1e-8 — far below what could bias a weight. */
static double backend_neglog2(uint64_t h)
{
	int k;
	double m, s, s2, ln;

	if (h == 0)
		h = 1;
	k = 63 - __builtin_clzll(h);
	m = (double)h / (double)(1ull << k); /* [1, 2] */
	s = (m - 1.0) / (m + 1.0);	     /* [0, 1/3] */
	s2 = s * s;
	ln = 2.0 * s *
	     (1.0 +
	      s2 * (1.0 / 3 +
		    s2 * (1.0 / 5 +
			  s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * (1.0 / 11 + s2 * (1.0 / 13)))))));
	return 64.0 - ((double)k + ln * 1.4426950408889634);
}

/* ---- eligibility ---- */

static bool backend_untried(const struct backend_pool *p, const struct backend *b)
{
	return b->state == SLOT_LIVE && b->tried != p->epoch;
}

/* Up, or down with its down period over (half-open), whatever its tier. */
static bool backend_available(const struct backend_pool *p, const struct backend *b, uint64_t now)
{
	return backend_untried(p, b) && (!b->down || now >= b->down_until);
}

/* Available, and in the tier this pick draws from. */
static bool backend_eligible(const struct backend_pool *p, const struct backend *b, uint64_t now)
{
	return b->backup == p->pick_backup && backend_available(p, b, now);
}

/* Which tier this pick draws from: the backups only when no primary is available. Stops at the
 * first available primary; no scan at all in a pool without backups. */
static bool backend_pick_tier(const struct backend_pool *p, uint64_t now)
{
	if (p->backups == 0)
		return false;
	for (uint32_t i = 0; i < p->nslots; i++) {
		const struct backend *b = &p->b[i];

		if (!b->backup && backend_available(p, b, now))
			return false;
	}
	return true;
}

/* a carries fewer sessions per unit of weight than b. */
static bool backend_less_loaded(const struct backend *a, const struct backend *b)
{
	return (uint64_t)a->active * b->weight < (uint64_t)b->active * a->weight;
}

static void backend_mark_tried(struct backend_pool *p, const uint32_t *ids, int n)
{
	if (++p->epoch == 0) {
		for (uint32_t i = 0; i < p->nslots; i++)
			p->b[i].tried = 0;
		p->epoch = 1;
	}
	for (int i = 0; i < n; i++) {
		if (ids[i] < p->nslots)
			p->b[ids[i]].tried = p->epoch;
	}
}

/* ---- the four policies: each returns an eligible id or -1 ---- */

static int backend_pick_roundrobin(struct backend_pool *p, uint64_t now)
{
	int64_t total = 0;
	int best = -1;

	for (uint32_t i = 0; i < p->nslots; i++) {
		struct backend *b = &p->b[i];

		if (!backend_eligible(p, b, now))
			continue;
		b->current += b->weight;
		total += b->weight;
		if (best < 0 || b->current > p->b[best].current)
			best = (int)i;
	}
	if (best >= 0)
		p->b[best].current -= total;
	return best;
}

static int backend_pick_leastconn(struct backend_pool *p, uint64_t now)
{
	int best = -1;

	if (p->cursor >= p->nslots)
		p->cursor = 0;
	for (uint32_t k = 0, i = p->cursor; k < p->nslots; k++, i++) {
		if (i == p->nslots)
			i = 0;

		if (!backend_eligible(p, &p->b[i], now))
			continue;
		if (best < 0 || backend_less_loaded(&p->b[i], &p->b[best]))
			best = (int)i;
	}
	if (best >= 0)
		p->cursor = (uint32_t)best + 1;
	return best;
}

/* The eligible backend at cumulative weight r, skipping skip. */
static int backend_weighted_at(struct backend_pool *p, uint64_t now, uint32_t r, int skip)
{
	for (uint32_t i = 0; i < p->nslots; i++) {
		if ((int)i == skip || !backend_eligible(p, &p->b[i], now))
			continue;
		if (r < p->b[i].weight)
			return (int)i;
		r -= p->b[i].weight;
	}
	return -1; /* not reached: r < the total weight scanned */
}

static int backend_pick_random2(struct backend_pool *p, uint64_t now)
{
	uint32_t total = 0, n = 0;
	int a, b, last = -1;

	for (uint32_t i = 0; i < p->nslots; i++) {
		if (backend_eligible(p, &p->b[i], now)) {
			total += p->b[i].weight;
			n++;
			last = (int)i;
		}
	}
	if (n <= 1)
		return last;
	a = backend_weighted_at(p, now, backend_rand_below(p, total), -1);
	b = backend_weighted_at(p, now, backend_rand_below(p, total - p->b[a].weight), a);
	return backend_less_loaded(&p->b[b], &p->b[a]) ? b : a;
}

/* Weighted rendezvous: every backend draws u = H(client, backend) in (0, 1); the lowest
 * -ln(u) / weight wins, which a backend does with probability weight / total weight. */
static int backend_pick_hash(struct backend_pool *p, uint64_t now, uint64_t client)
{
	double best_score = 0;
	uint64_t best_h = 0;
	int best = -1;

	for (uint32_t i = 0; i < p->nslots; i++) {
		const struct backend *b = &p->b[i];
		uint64_t h;

		if (!backend_eligible(p, b, now))
			continue;
		h = backend_mix64(client ^ b->key);
		if (p->uniform) {
			if (best < 0 || h > best_h) {
				best_h = h;
				best = (int)i;
			}
		} else {
			/* -log2(u) >= (1 - u) / ln 2: most backends lose on this bound alone,
			 * before paying for the logarithm. */
			double bound = (double)(int64_t)(~h >> 1) *
				       (1.4426950408889634 / 9223372036854775808.0);
			double score;

			if (best >= 0 && bound * b->inv_weight >= best_score)
				continue;
			score = backend_neglog2(h) * b->inv_weight;
			if (best < 0 || score < best_score) {
				best_score = score;
				best = (int)i;
			}
		}
	}
	return best;
}

/* Every untried member is down: the primary that comes back soonest, else the backup that
 * does. A primary first because the backups are there for while the primaries are gone: with
 * everything down, the one to find back up first is a primary. */
static int backend_pick_fallback(struct backend_pool *p)
{
	int best = -1;

	for (uint32_t i = 0; i < p->nslots; i++) {
		const struct backend *b = &p->b[i];

		if (!backend_untried(p, b))
			continue;
		if (best < 0 || b->backup < p->b[best].backup ||
		    (b->backup == p->b[best].backup && b->down_until < p->b[best].down_until))
			best = (int)i;
	}
	return best;
}

int backend_pick(struct backend_pool *p, const struct sockaddr *client, uint64_t now_ms,
		 const uint32_t *tried_ids, int ntried)
{
	uint64_t ch;
	int id;

	backend_mark_tried(p, tried_ids, tried_ids != NULL ? ntried : 0);
	p->pick_backup = backend_pick_tier(p, now_ms);
	switch (p->balance) {
	case BALANCE_LEASTCONN:
		id = backend_pick_leastconn(p, now_ms);
		break;
	case BALANCE_RANDOM2:
		id = backend_pick_random2(p, now_ms);
		break;
	case BALANCE_HASH:
		/* Without a client IP to hash, spreading beats sending everyone to one backend. */
		if (backend_client_hash(client, &ch))
			id = backend_pick_hash(p, now_ms, ch);
		else
			id = backend_pick_roundrobin(p, now_ms);
		break;
	case BALANCE_ROUNDROBIN:
	default:
		id = backend_pick_roundrobin(p, now_ms);
		break;
	}
	if (id < 0)
		id = backend_pick_fallback(p);
	if (id >= 0)
		p->b[id].picks++;
	return id;
}

/* ---- health and accounting ---- */

/* Recounts the backup members and whether the traffic is on them. Called only when a member's
 * up/down state or the membership changed, so its scan costs nothing per pick. */
static void backend_backup_refresh(struct backend_pool *p)
{
	uint32_t backups = 0;
	bool primary_up = false;

	for (uint32_t i = 0; i < p->nslots; i++) {
		const struct backend *b = &p->b[i];

		if (b->state != SLOT_LIVE)
			continue;
		if (b->backup)
			backups++;
		else if (!b->down)
			primary_up = true;
	}
	p->backups = backups;
	p->on_backup = backups > 0 && !primary_up;
}

bool backend_pool_using_backup(const struct backend_pool *p)
{
	return p->on_backup;
}

int backend_pool_backup_changed(struct backend_pool *p)
{
	if (p->on_backup == p->on_backup_told)
		return 0;
	p->on_backup_told = p->on_backup;
	return p->on_backup ? 1 : -1;
}

static struct backend *backend_get(const struct backend_pool *p, uint32_t id)
{
	if (id >= p->nslots || p->b[id].state == SLOT_FREE)
		return NULL;
	return &p->b[id];
}

bool backend_report(struct backend_pool *p, uint32_t id, bool ok, uint64_t now_ms)
{
	struct backend *b = backend_get(p, id);

	if (b == NULL)
		return false;
	if (ok) {
		bool was_down = b->down;

		b->fails = 0;
		b->down = false;
		if (was_down)
			backend_backup_refresh(p);
		return was_down;
	}
	if (b->fails < UINT32_MAX)
		b->fails++;
	if (b->down) {
		/* Half-open and failed again: down for another period. A failure reported while
		 * still inside the period (a connect started before it) does not extend it. */
		if (now_ms >= b->down_until)
			b->down_until = now_ms + p->fail_timeout_ms;
		return false;
	}
	if (b->fails < p->fail_threshold)
		return false;
	b->down = true;
	b->down_until = now_ms + p->fail_timeout_ms;
	backend_backup_refresh(p);
	return true;
}

bool backend_set_up(struct backend_pool *p, uint32_t id, bool up)
{
	struct backend *b = backend_get(p, id);
	bool changed;

	if (b == NULL)
		return false;
	changed = b->down == up;
	if (up) {
		b->down = false;
		b->fails = 0;
	} else {
		b->down = true;
		b->down_until = UINT64_MAX; /* never half-open: the checker says when */
	}
	if (changed)
		backend_backup_refresh(p);
	return changed;
}

/* Drops trailing free slots so scans stop at the last id in use. */
static void backend_trim(struct backend_pool *p)
{
	while (p->nslots > 0 && p->b[p->nslots - 1].state == SLOT_FREE)
		p->nslots--;
}

static void backend_free_slot(struct backend_pool *p, struct backend *b)
{
	memset(b, 0, sizeof(*b));
	backend_trim(p);
}

int backend_acquire(struct backend_pool *p, uint32_t id)
{
	struct backend *b = backend_get(p, id);

	if (b == NULL)
		return -ENOENT;
	b->active++;
	return 0;
}

int backend_release(struct backend_pool *p, uint32_t id)
{
	struct backend *b = backend_get(p, id);

	if (b == NULL || b->active == 0)
		return -ENOENT;
	if (--b->active == 0 && b->state == SLOT_REMOVED)
		backend_free_slot(p, b);
	return 0;
}

/* ---- membership ---- */

static int backend_find(const struct backend_pool *p, const struct addr *a)
{
	for (uint32_t i = 0; i < p->nslots; i++) {
		if (p->b[i].state != SLOT_FREE && addr_equal(&p->b[i].addr, a))
			return (int)i;
	}
	return -1;
}

/* An upstream address a pool can connect to: IPv4 or IPv6, or a unix socket with a name (a path
 * or an abstract name; an unnamed one reaches nothing). */
static bool backend_addr_ok(const struct addr *a)
{
	switch (a->u.sa.sa_family) {
	case AF_INET:
	case AF_INET6:
		return true;
	case AF_UNIX:
		return a->len > offsetof(struct sockaddr_un, sun_path) &&
		       a->len <= sizeof(struct sockaddr_un);
	default:
		return false;
	}
}

static int backend_validate(const struct backend_spec *specs, int n)
{
	if (n < 0 || (n > 0 && specs == NULL))
		return -EINVAL;
	if (n > BACKEND_MAX)
		return -ENOSPC;
	for (int i = 0; i < n; i++) {
		if (specs[i].weight > BACKEND_WEIGHT_MAX || !backend_addr_ok(&specs[i].addr))
			return -EINVAL;
		for (int j = 0; j < i; j++) {
			if (addr_equal(&specs[i].addr, &specs[j].addr))
				return -EINVAL;
		}
	}
	return 0;
}

/* Makes room for ids below want; new entries are free (zeroed). */
static int backend_reserve(struct backend_pool *p, uint32_t want)
{
	struct backend *nb;
	uint32_t cap = p->cap ? p->cap : 8;

	if (want <= p->cap)
		return 0;
	while (cap < want)
		cap *= 2;
	if (cap > BACKEND_MAX)
		cap = BACKEND_MAX;
	nb = realloc(p->b, (size_t)cap * sizeof(*nb));
	if (nb == NULL)
		return -ENOMEM;
	memset(nb + p->cap, 0, (size_t)(cap - p->cap) * sizeof(*nb));
	p->b = nb;
	p->cap = cap;
	return 0;
}

int backend_pool_update(struct backend_pool *p, const struct backend_spec *specs, int n)
{
	uint32_t keep = 0, fresh = 0, w0 = 0;
	int rc = backend_validate(specs, n);

	if (rc < 0)
		return rc;
	/* Count what stays occupied: slots named in specs, and unnamed ones with sessions. */
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct backend *b = &p->b[i];
		bool named = false;

		if (b->state == SLOT_FREE)
			continue;
		for (int j = 0; j < n && !named; j++)
			named = addr_equal(&b->addr, &specs[j].addr);
		if (named || b->active > 0)
			keep++;
	}
	for (int j = 0; j < n; j++)
		fresh += backend_find(p, &specs[j].addr) < 0;
	if (keep + fresh > BACKEND_MAX)
		return -ENOSPC;
	/* New ids fill the holes first, so no id reaches max(nslots, keep + fresh). */
	rc = backend_reserve(p, keep + fresh > p->nslots ? keep + fresh : p->nslots);
	if (rc < 0)
		return rc;

	/* Nothing fails from here on. Every member becomes removed, the named ones are revived
	 * (with their id, counters and health), the rest free their id if no session holds it,
	 * and only then do new addresses take the lowest free ids. */
	for (uint32_t i = 0; i < p->nslots; i++) {
		if (p->b[i].state == SLOT_LIVE)
			p->b[i].state = SLOT_REMOVED;
	}
	for (int j = 0; j < n; j++) {
		int id = backend_find(p, &specs[j].addr);

		if (id >= 0)
			p->b[id].state = SLOT_LIVE;
	}
	for (uint32_t i = 0; i < p->nslots; i++) {
		if (p->b[i].state == SLOT_REMOVED && p->b[i].active == 0)
			memset(&p->b[i], 0, sizeof(p->b[i]));
	}
	for (int j = 0; j < n; j++) {
		int id = backend_find(p, &specs[j].addr);
		struct backend *b;

		if (id < 0) {
			id = 0;
			while (p->b[id].state != SLOT_FREE)
				id++;
			b = &p->b[id];
			b->addr = specs[j].addr;
			b->key = backend_addr_key(&b->addr);
			b->state = SLOT_LIVE;
			if ((uint32_t)id >= p->nslots)
				p->nslots = (uint32_t)id + 1;
		}
		b = &p->b[id];
		b->weight = specs[j].weight ? specs[j].weight : BACKEND_WEIGHT_DEFAULT;
		b->inv_weight = 1.0 / b->weight;
		b->backup = specs[j].backup;
	}
	p->members = (uint32_t)n;
	p->uniform = true;
	for (uint32_t i = 0; i < p->nslots; i++) {
		struct backend *b = &p->b[i];

		b->current = 0; /* weights may have changed: restart the round-robin cycle */
		if (b->state == SLOT_LIVE) {
			if (w0 == 0)
				w0 = b->weight;
			p->uniform = p->uniform && b->weight == w0;
		}
	}
	backend_trim(p);
	backend_backup_refresh(p);
	return 0;
}

/* ---- life cycle and accessors ---- */

void backend_opts_defaults(struct backend_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->balance = BALANCE_ROUNDROBIN;
	o->fail_threshold = BACKEND_FAIL_THRESHOLD_DEFAULT;
	o->fail_timeout_ms = BACKEND_FAIL_TIMEOUT_MS_DEFAULT;
	o->seed = 1;
}

int backend_pool_new(const struct backend_opts *o, struct backend_pool **out)
{
	struct backend_pool *p;

	*out = NULL;
	if ((unsigned int)o->balance >= BALANCE__COUNT || o->fail_threshold == 0)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	p->balance = o->balance;
	p->fail_threshold = o->fail_threshold;
	p->fail_timeout_ms = o->fail_timeout_ms;
	p->rng = o->seed;
	p->uniform = true;
	*out = p;
	return 0;
}

void backend_pool_free(struct backend_pool *p)
{
	if (p == NULL)
		return;
	free(p->b);
	free(p);
}

uint32_t backend_slots(const struct backend_pool *p)
{
	return p->nslots;
}

uint32_t backend_count(const struct backend_pool *p)
{
	return p->members;
}

enum backend_balance backend_pool_balance(const struct backend_pool *p)
{
	return p->balance;
}

int backend_info(const struct backend_pool *p, uint32_t id, struct backend_info *out)
{
	const struct backend *b = backend_get(p, id);

	if (b == NULL)
		return -ENOENT;
	out->addr = b->addr;
	out->weight = b->weight;
	out->active = b->active;
	out->fails = b->fails;
	out->picks = b->picks;
	out->down_until = b->down ? b->down_until : 0;
	out->up = !b->down;
	out->removed = b->state == SLOT_REMOVED;
	out->backup = b->backup;
	return 0;
}
