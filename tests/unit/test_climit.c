/* Unit tests for the per-client limit table (SipHash vectors, the connection limit and its
 * release, token buckets at exact millisecond boundaries and without drift, burst defaults, a
 * full table failing open or closed, reuse of drained entries only, IPv4-mapped = IPv4, the
 * spread of sequential addresses) and for the reuseport steering program on this kernel
 * (real sockets: 20 source addresses in 127.0.0.0/8 each pinned to one listener, IPv6 ::1,
 * and IPv4 clients on a dual-stack group). */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "uproxy/climit.h"
#include "uproxy/steer.h"

static const uint8_t seed0[16] = { 0 };

/* A sockaddr_in for 127.x.y.z style tests: 10.(i>>16).(i>>8).i. */
static struct sockaddr_in v4n(uint32_t i)
{
	struct sockaddr_in s = { .sin_family = AF_INET, .sin_port = htons(1234) };

	s.sin_addr.s_addr = htonl(0x0a000000u | (i & 0xffffff));
	return s;
}

#define SA(x) ((const struct sockaddr *)&(x))

/* Admits client at now, asserting verdict want; returns the slot. */
static uint32_t admit(struct climit *t, const struct sockaddr *sa, uint64_t now,
		      enum climit_verdict want, const char *what)
{
	uint32_t slot = 12345;
	enum climit_verdict v = climit_admit(t, sa, now, &slot);

	cr_assert_eq(v, want, "%s: verdict %s, want %s", what, climit_verdict_name(v),
		     climit_verdict_name(want));
	if (v != CLIMIT_OK)
		cr_assert_eq(slot, CLIMIT_NO_SLOT, "%s: a refusal holds no slot", what);
	return slot;
}

Test(climit, siphash_reference_vectors)
{
	uint8_t key[16], msg[64];

	for (int i = 0; i < 16; i++)
		key[i] = (uint8_t)i;
	for (int i = 0; i < 64; i++)
		msg[i] = (uint8_t)i;
	/* SipHash-2-4 paper, appendix A, and the reference vectors_sip64 (lengths 0, 15, 16). */
	cr_assert_eq(climit_siphash(key, msg, 0), 0x726fdb47dd0e0e31ULL);
	cr_assert_eq(climit_siphash(key, msg, 15), 0xa129ca6149be45e5ULL);
	cr_assert_eq(climit_siphash(key, msg, 16), 0x3f2acc7f57c29bdbULL);
	cr_assert_eq(climit_siphash(key, msg, 63), 0x958a324ceb064572ULL);
}

Test(climit, memory_per_entry)
{
	struct climit *t = climit_new(16384, 5, 0, 0, false);

	cr_assert_not_null(t);
	cr_assert_eq(CLIMIT_ENTRY_BYTES, 32);
	cr_assert_eq(climit_entries(t), 16384);
	cr_assert_geq(climit_bytes(t), 16384 * 32);
	cr_assert_lt(climit_bytes(t), 16384 * 32 + 128, "header %zu bytes",
		     climit_bytes(t) - 16384 * 32);
	climit_free(t);
}

Test(climit, bad_arguments)
{
	errno = 0;
	cr_assert_null(climit_new(0, 5, 0, 0, false));
	cr_assert_eq(errno, EINVAL);
	cr_assert_null(climit_new(CLIMIT_MAX_ENTRIES + 1, 5, 0, 0, false));
	cr_assert_null(climit_new(64, 0, CLIMIT_MAX_RATE + 1, 0, false));
	cr_assert_null(climit_new(64, 0, 10, CLIMIT_MAX_RATE + 1, false));
	climit_free(NULL);
}

Test(climit, max_conns_and_release)
{
	struct climit *t = climit_new(1024, 5, 0, 0, false);
	struct sockaddr_in a = v4n(2), b = v4n(3);
	uint32_t sa[5], sb[5];

	cr_assert_not_null(t);
	for (int i = 0; i < 5; i++)
		sa[i] = admit(t, SA(a), 1000, CLIMIT_OK, "a: one of the first 5");
	cr_assert_eq(climit_conns(t, SA(a)), 5);
	admit(t, SA(a), 1000, CLIMIT_OVER_CONNS, "a: the 6th");
	admit(t, SA(a), 5000, CLIMIT_OVER_CONNS, "a: the 6th, later");
	for (int i = 0; i < 5; i++)
		sb[i] = admit(t, SA(b), 1000, CLIMIT_OK, "b: one of its 5");
	admit(t, SA(b), 1000, CLIMIT_OVER_CONNS, "b: its 6th");
	for (int i = 1; i < 5; i++)
		cr_assert_eq(sa[i], sa[0], "one client, one slot");
	cr_assert_neq(sa[0], sb[0], "two clients, two slots");
	climit_release(t, sa[2]);
	cr_assert_eq(climit_conns(t, SA(a)), 4);
	sa[2] = admit(t, SA(a), 1001, CLIMIT_OK, "a: after one closed");
	admit(t, SA(a), 1001, CLIMIT_OVER_CONNS, "a: full again");
	for (int i = 0; i < 5; i++) {
		climit_release(t, sa[i]);
		climit_release(t, sb[i]);
	}
	cr_assert_eq(climit_conns(t, SA(a)), 0);
	cr_assert_eq(climit_conns(t, SA(b)), 0);
	climit_release(t, CLIMIT_NO_SLOT); /* ignored */
	climit_free(t);
}

Test(climit, v4mapped_is_ipv4_and_v6_distinct)
{
	struct climit *t = climit_new(1024, 2, 0, 0, false);
	struct sockaddr_in a = { .sin_family = AF_INET };
	struct sockaddr_in6 m = { .sin6_family = AF_INET6 }, six = { .sin6_family = AF_INET6 };

	inet_pton(AF_INET, "127.0.0.2", &a.sin_addr);
	inet_pton(AF_INET6, "::ffff:127.0.0.2", &m.sin6_addr);
	inet_pton(AF_INET6, "::1", &six.sin6_addr);
	admit(t, SA(a), 0, CLIMIT_OK, "127.0.0.2");
	admit(t, SA(m), 0, CLIMIT_OK, "::ffff:127.0.0.2");
	admit(t, SA(a), 0, CLIMIT_OVER_CONNS, "127.0.0.2 seen twice already");
	admit(t, SA(m), 0, CLIMIT_OVER_CONNS, "the mapped form is the same client");
	cr_assert_eq(climit_conns(t, SA(m)), 2);
	admit(t, SA(six), 0, CLIMIT_OK, "::1");
	admit(t, SA(six), 0, CLIMIT_OK, "::1 again");
	admit(t, SA(six), 0, CLIMIT_OVER_CONNS, "::1 a third time");
	climit_free(t);
}

Test(climit, unix_and_unknown_never_limited)
{
	struct climit *t = climit_new(8, 1, 1, 1, false);
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	struct sockaddr unspec = { .sa_family = AF_UNSPEC };

	for (int i = 0; i < 10; i++) {
		cr_assert_eq(admit(t, SA(un), 0, CLIMIT_OK, "unix"), CLIMIT_NO_SLOT);
		cr_assert_eq(admit(t, &unspec, 0, CLIMIT_OK, "unspec"), CLIMIT_NO_SLOT);
		cr_assert_eq(admit(t, NULL, 0, CLIMIT_OK, "NULL"), CLIMIT_NO_SLOT);
	}
	cr_assert_eq(climit_full_admits(t), 0, "not table admits");
	climit_free(t);
}

Test(climit, bucket_refill_exact_times)
{
	struct climit *t = climit_new(1024, 0, 10, 10, false);
	struct sockaddr_in a = v4n(7);
	uint64_t t0 = 1000000;

	for (int i = 0; i < 10; i++)
		climit_release(t, admit(t, SA(a), t0, CLIMIT_OK, "burst of 10"));
	admit(t, SA(a), t0, CLIMIT_OVER_RATE, "the 11th");
	/* 10 per second: one token per 100 ms exactly */
	admit(t, SA(a), t0 + 99, CLIMIT_OVER_RATE, "0.99 token at +99 ms");
	climit_release(t, admit(t, SA(a), t0 + 100, CLIMIT_OK, "1 token at +100 ms"));
	admit(t, SA(a), t0 + 100, CLIMIT_OVER_RATE, "spent at +100 ms");
	admit(t, SA(a), t0 + 199, CLIMIT_OVER_RATE, "0.99 token at +199 ms");
	climit_release(t, admit(t, SA(a), t0 + 200, CLIMIT_OK, "+200 ms"));
	/* 450 ms later: 4.5 tokens; 4 pass, the half carries over */
	for (int i = 0; i < 4; i++)
		climit_release(t, admit(t, SA(a), t0 + 650, CLIMIT_OK, "+650 ms"));
	admit(t, SA(a), t0 + 650, CLIMIT_OVER_RATE, "0.5 left at +650 ms");
	admit(t, SA(a), t0 + 699, CLIMIT_OVER_RATE, "0.99 at +699 ms");
	climit_release(t, admit(t, SA(a), t0 + 700, CLIMIT_OK, "the carried half + 50 ms"));
	/* a long pause refills to the burst, not beyond */
	for (int i = 0; i < 10; i++)
		climit_release(t, admit(t, SA(a), t0 + 60000, CLIMIT_OK, "burst after a pause"));
	admit(t, SA(a), t0 + 60000, CLIMIT_OVER_RATE, "the bucket holds 10, no more");
	climit_free(t);
}

Test(climit, bucket_no_drift)
{
	/* 3 per second is 333.33 ms per token: with integer milliseconds a rounding refill
	 * would drift. Drain the bucket, then poll at irregular steps for 30 s: exactly
	 * floor(30000 * 3 / 1000) = 90 tokens were earned, so exactly 90 pass. */
	struct climit *t = climit_new(64, 0, 3, 100, false);
	struct sockaddr_in a = v4n(9);
	uint64_t t0 = 5000, now = t0, x = 88172645463325252ULL;
	int passed = 0;

	for (int i = 0; i < 100; i++)
		climit_release(t, admit(t, SA(a), t0, CLIMIT_OK, "drain"));
	admit(t, SA(a), t0, CLIMIT_OVER_RATE, "drained");
	while (now < t0 + 30000) {
		uint32_t slot;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		now += 1 + x % 47;
		if (now > t0 + 30000)
			now = t0 + 30000;
		while (climit_admit(t, SA(a), now, &slot) == CLIMIT_OK) {
			climit_release(t, slot);
			passed++;
		}
	}
	cr_assert_eq(passed, 90, "%d passed in 30 s at 3/s", passed);
	climit_free(t);
}

Test(climit, burst_defaults_and_larger_burst)
{
	struct climit *t = climit_new(64, 0, 5, 0, false);
	struct sockaddr_in a = v4n(1);

	for (int i = 0; i < 5; i++)
		climit_release(t, admit(t, SA(a), 0, CLIMIT_OK, "burst 0 = rate 5"));
	admit(t, SA(a), 0, CLIMIT_OVER_RATE, "the 6th");
	climit_free(t);
	t = climit_new(64, 0, 1, 20, false);
	for (int i = 0; i < 20; i++)
		climit_release(t, admit(t, SA(a), 0, CLIMIT_OK, "burst 20 at rate 1"));
	admit(t, SA(a), 0, CLIMIT_OVER_RATE, "the 21st");
	admit(t, SA(a), 999, CLIMIT_OVER_RATE, "rate 1: not before 1 s");
	climit_release(t, admit(t, SA(a), 1000, CLIMIT_OK, "rate 1 at 1 s"));
	climit_free(t);
}

Test(climit, over_conns_takes_no_token)
{
	struct climit *t = climit_new(64, 1, 10, 2, false);
	struct sockaddr_in a = v4n(4);
	uint32_t s;

	s = admit(t, SA(a), 0, CLIMIT_OK, "first");
	for (int i = 0; i < 5; i++)
		admit(t, SA(a), 0, CLIMIT_OVER_CONNS, "while one is open");
	climit_release(t, s);
	s = admit(t, SA(a), 0, CLIMIT_OK, "the second token is still there");
	climit_release(t, s);
	admit(t, SA(a), 0, CLIMIT_OVER_RATE, "both tokens spent");
	climit_free(t);
}

Test(climit, table_full_closed_then_reuse)
{
	/* 8 entries = one window: the 9th distinct live client finds no slot. */
	struct climit *t = climit_new(8, 1, 0, 0, false);
	uint32_t slots[9];

	for (uint32_t i = 0; i < 8; i++) {
		struct sockaddr_in a = v4n(i);

		slots[i] = admit(t, SA(a), 0, CLIMIT_OK, "fills the table");
	}
	struct sockaddr_in ninth = v4n(8), third = v4n(3), first = v4n(0);

	admit(t, SA(ninth), 0, CLIMIT_TABLE_FULL_REFUSED, "the 9th address, fail closed");
	admit(t, SA(first), 0, CLIMIT_OVER_CONNS, "a known client is still found");
	cr_assert_eq(climit_full_admits(t), 0);
	climit_release(t, slots[3]);
	slots[8] = admit(t, SA(ninth), 0, CLIMIT_OK, "a drained entry is reused");
	cr_assert_eq(slots[8], slots[3], "it took the drained slot");
	cr_assert_eq(climit_conns(t, SA(third)), 0, "the old client is forgotten");
	admit(t, SA(third), 0, CLIMIT_TABLE_FULL_REFUSED, "and is now the one without a slot");
	climit_free(t);
}

Test(climit, table_full_open_counts)
{
	struct climit *t = climit_new(8, 1, 0, 0, true);
	struct sockaddr_in ninth = v4n(100);

	for (uint32_t i = 0; i < 8; i++) {
		struct sockaddr_in a = v4n(i);

		admit(t, SA(a), 0, CLIMIT_OK, "fills the table");
	}
	for (int i = 0; i < 3; i++)
		cr_assert_eq(admit(t, SA(ninth), 0, CLIMIT_OK, "fail open"), CLIMIT_NO_SLOT);
	cr_assert_eq(climit_full_admits(t), 3);
	climit_release(t, CLIMIT_NO_SLOT);
	cr_assert_eq(climit_conns(t, SA(ninth)), 0, "nothing held for it");
	climit_free(t);
}

Test(climit, entry_reusable_only_once_bucket_refilled)
{
	/* No connection limit: entries hold no connections, only buckets. */
	struct climit *t = climit_new(8, 0, 10, 10, false);
	struct sockaddr_in ninth = v4n(8);

	for (uint32_t i = 0; i < 8; i++) {
		struct sockaddr_in a = v4n(i);

		climit_release(t, admit(t, SA(a), 1000, CLIMIT_OK, "one token each"));
	}
	admit(t, SA(ninth), 1050, CLIMIT_TABLE_FULL_REFUSED, "buckets not yet full: they count");
	admit(t, SA(ninth), 1099, CLIMIT_TABLE_FULL_REFUSED, "0.99 token refilled");
	climit_release(t, admit(t, SA(ninth), 1100, CLIMIT_OK, "refilled: entries carry nothing"));
	climit_free(t);
}

Test(climit, sequential_addresses_spread)
{
	/* 2048 live clients from one /21 in a 16384-entry table (1/8 load): a seeded hash
	 * leaves no 8-slot window full. 12288 (3/4 load): most still fit. */
	struct climit *t = climit_new(16384, 1, 0, 0, false);
	int refused = 0;

	for (uint32_t i = 0; i < 2048; i++) {
		struct sockaddr_in a = v4n(0x7f0000 + i);
		uint32_t slot;

		refused += climit_admit(t, SA(a), 0, &slot) != CLIMIT_OK;
	}
	cr_assert_eq(refused, 0, "%d of 2048 refused at 1/8 load", refused);
	for (uint32_t i = 2048; i < 12288; i++) {
		struct sockaddr_in a = v4n(0x7f0000 + i);
		uint32_t slot;

		refused += climit_admit(t, SA(a), 0, &slot) != CLIMIT_OK;
	}
	cr_log_info("%d of 12288 clients refused at 3/4 load", refused);
	cr_assert_lt(refused, 12288 / 10, "%d of 12288 refused at 3/4 load", refused);
	climit_free(t);
}

Test(climit, seed_changes_layout)
{
	uint8_t s1[16] = { 1 };
	struct climit *a = climit_new_seeded(1024, 1, 0, 0, false, seed0);
	struct climit *b = climit_new_seeded(1024, 1, 0, 0, false, s1);
	int same = 0;

	for (uint32_t i = 0; i < 64; i++) {
		struct sockaddr_in c = v4n(i);
		uint32_t sa, sb;

		climit_admit(a, SA(c), 0, &sa);
		climit_admit(b, SA(c), 0, &sb);
		same += sa == sb;
	}
	cr_assert_lt(same, 8, "%d of 64 clients got the same slot under another seed", same);
	climit_free(a);
	climit_free(b);
}

Test(climit, time_never_runs_backwards_into_tokens)
{
	struct climit *t = climit_new(64, 0, 10, 1, false);
	struct sockaddr_in a = v4n(5);

	climit_release(t, admit(t, SA(a), 10000, CLIMIT_OK, "the token"));
	admit(t, SA(a), 5000, CLIMIT_OVER_RATE, "an earlier time refills nothing");
	admit(t, SA(a), 10099, CLIMIT_OVER_RATE, "still measured from 10000");
	climit_release(t, admit(t, SA(a), 10100, CLIMIT_OK, "+100 ms"));
	climit_release(t, admit(t, SA(a), UINT64_MAX / 2, CLIMIT_OK, "a huge gap refills"));
	climit_free(t);
}

/* ---- steer: the reuseport program on real sockets ---- */

#define STEER_CONNS_PER_ADDR 3

/* Opens n reuseport listeners on the same port of family (AF_INET on 127.0.0.1, AF_INET6 on
 * ::1, or dual-stack [::] when dual), in order; attaches the program; returns the port. */
static uint16_t steer_group(int *fds, unsigned int n, int family, bool dual)
{
	static const int one = 1, zero = 0;
	struct sockaddr_storage ss;
	socklen_t len;
	uint16_t port = 0;
	char why[160];

	for (unsigned int i = 0; i < n; i++) {
		memset(&ss, 0, sizeof(ss));
		if (family == AF_INET) {
			struct sockaddr_in *s = (struct sockaddr_in *)&ss;

			s->sin_family = AF_INET;
			s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			s->sin_port = port;
			len = sizeof(*s);
		} else {
			struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;

			s->sin6_family = AF_INET6;
			s->sin6_addr = dual ? in6addr_any : in6addr_loopback;
			s->sin6_port = port;
			len = sizeof(*s);
		}
		fds[i] = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		cr_assert_geq(fds[i], 0);
		cr_assert_eq(setsockopt(fds[i], SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
		if (family == AF_INET6)
			setsockopt(fds[i], IPPROTO_IPV6, IPV6_V6ONLY, dual ? &zero : &one,
				   sizeof(int));
		cr_assert_eq(bind(fds[i], (struct sockaddr *)&ss, len), 0, "bind: %s",
			     strerror(errno));
		cr_assert_eq(listen(fds[i], 128), 0);
		if (port == 0) {
			len = sizeof(ss);
			getsockname(fds[i], (struct sockaddr *)&ss, &len);
			port = family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
						 : ((struct sockaddr_in6 *)&ss)->sin6_port;
		}
	}
	for (unsigned int i = 0; i < n; i++)
		cr_assert_eq(steer_attach(fds[i], n, family, why, sizeof(why)), 0, "attach: %s",
			     why);
	return port;
}

/* Connects from src (port 0: any) to dst, waits for the connection, and returns the index of
 * the listener that has it queued (accepting it), or -1. */
static int steer_land(const int *lfds, unsigned int n, const struct sockaddr *src,
		      socklen_t srclen, const struct sockaddr *dst, socklen_t dstlen)
{
	int c = socket(dst->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0), got = -1;

	cr_assert_geq(c, 0);
	if (src != NULL)
		cr_assert_eq(bind(c, src, srclen), 0, "bind source: %s", strerror(errno));
	cr_assert_eq(connect(c, dst, dstlen), 0, "connect: %s", strerror(errno));
	for (int tries = 0; tries < 100 && got < 0; tries++) {
		struct pollfd p[8];

		for (unsigned int i = 0; i < n; i++)
			p[i] = (struct pollfd){ .fd = lfds[i], .events = POLLIN };
		if (poll(p, n, 20) <= 0)
			continue;
		for (unsigned int i = 0; i < n; i++) {
			if (!(p[i].revents & POLLIN))
				continue;
			int a = accept(lfds[i], NULL, NULL);

			if (a >= 0) {
				cr_assert_eq(got, -1, "two connections queued for one connect");
				got = (int)i;
				close(a);
			}
		}
	}
	close(c);
	return got;
}

Test(steer, ipv4_sources_pinned)
{
	int lfds[2], count[2] = { 0 };
	struct sockaddr_in dst = { .sin_family = AF_INET };

	dst.sin_port = steer_group(lfds, 2, AF_INET, false);
	dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (int i = 0; i < 20; i++) {
		struct sockaddr_in src = { .sin_family = AF_INET };
		char name[INET_ADDRSTRLEN];
		int first = -1;

		/* 127.x.y.z spread over all three bytes */
		src.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)(i * 0x010203 + 0x000102));
		inet_ntop(AF_INET, &src.sin_addr, name, sizeof(name));
		for (int k = 0; k < STEER_CONNS_PER_ADDR; k++) {
			int at = steer_land(lfds, 2, SA(src), sizeof(src), SA(dst), sizeof(dst));

			cr_assert_geq(at, 0, "%s: connection %d never arrived", name, k);
			if (first < 0)
				first = at;
			cr_assert_eq(at, first, "%s: connection %d on listener %d, before on %d",
				     name, k, at, first);
			count[at]++;
		}
		cr_assert_eq((unsigned int)first, steer_index(&src.sin_addr, 4, 2),
			     "%s: the kernel's choice %d differs from steer_index", name, first);
	}
	cr_log_info("listener 0: %d, listener 1: %d connections", count[0], count[1]);
	cr_assert_gt(count[0], 0, "listener 0 got nothing");
	cr_assert_gt(count[1], 0, "listener 1 got nothing");
	close(lfds[0]);
	close(lfds[1]);
}

Test(steer, ipv6_source_pinned)
{
	/* ::1 is the one IPv6 loopback source; with 3 listeners the kernel's own 4-tuple hash
	 * would put 12 connections from changing source ports on one socket with p = 3^-11. */
	struct sockaddr_in6 dst = { .sin6_family = AF_INET6 };
	unsigned int want = steer_index(&in6addr_loopback, 16, 3);
	int lfds[3];

	dst.sin6_port = steer_group(lfds, 3, AF_INET6, false);
	dst.sin6_addr = in6addr_loopback;
	for (int k = 0; k < 12; k++) {
		int at = steer_land(lfds, 3, NULL, 0, SA(dst), sizeof(dst));

		cr_assert_eq(at, (int)want, "::1 connection %d on listener %d, want %u", k, at, want);
	}
	for (int i = 0; i < 3; i++)
		close(lfds[i]);
}

Test(steer, ipv4_on_dual_stack_pinned)
{
	struct sockaddr_in6 dst = { .sin6_family = AF_INET6 };
	int lfds[2], count[2] = { 0 };

	dst.sin6_port = steer_group(lfds, 2, AF_INET6, true);
	inet_pton(AF_INET6, "::ffff:127.0.0.1", &dst.sin6_addr);
	for (int i = 0; i < 12; i++) {
		struct sockaddr_in6 src = { .sin6_family = AF_INET6 };
		uint8_t v4[4] = { 127, 0, 3, (uint8_t)(10 + i) };
		unsigned int want = steer_index(v4, 4, 2);

		inet_pton(AF_INET6, "::ffff:127.0.3.0", &src.sin6_addr);
		src.sin6_addr.s6_addr[15] = v4[3];
		for (int k = 0; k < STEER_CONNS_PER_ADDR; k++) {
			int at = steer_land(lfds, 2, SA(src), sizeof(src), SA(dst), sizeof(dst));

			cr_assert_eq(at, (int)want, "127.0.3.%u connection %d on %d, want %u", v4[3],
				     k, at, want);
			count[at]++;
		}
	}
	cr_assert(count[0] > 0 && count[1] > 0, "one listener got nothing (%d/%d)", count[0],
		  count[1]);
	close(lfds[0]);
	close(lfds[1]);
}

Test(steer, bad_arguments)
{
	char why[160];
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	cr_assert_eq(steer_attach(fd, 1, AF_INET, why, sizeof(why)), -EINVAL);
	cr_assert(strstr(why, "2..") != NULL, "%s", why);
	cr_assert_eq(steer_attach(fd, 2, AF_UNIX, why, sizeof(why)), -EINVAL);
	cr_assert(strstr(why, "IPv4 or IPv6") != NULL, "%s", why);
	close(fd);
}
