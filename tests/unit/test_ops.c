/* Unit tests for the operations features: the /metrics request router, access-log line
 * formatting and its double buffer, and the Prometheus rendering of worker snapshots. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uproxy/accesslog.h"
#include "uproxy/httpstats.h"
#include "uproxy/stats.h"

/* ---- httpstats_route ---------------------------------------------------- */

static int route(const char *s)
{
	return httpstats_route(s, strlen(s));
}

Test(ops, route_get_metrics)
{
	cr_assert_eq(route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
	cr_assert_eq(route("GET /metrics HTTP/1.0\r\n\r\n"), 200);
	cr_assert_eq(route("GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
	cr_assert_eq(route("GET /metrics? HTTP/1.1\r\n\r\n"), 200);
	/* bytes after the end of the head do not matter */
	cr_assert_eq(route("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\nX"), 200);
}

Test(ops, route_other_path_404)
{
	cr_assert_eq(route("GET /other HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
	cr_assert_eq(route("GET / HTTP/1.1\r\n\r\n"), 404);
	cr_assert_eq(route("GET /metricsX HTTP/1.1\r\n\r\n"), 404);
	cr_assert_eq(route("GET /metric HTTP/1.1\r\n\r\n"), 404);
	cr_assert_eq(route("GET /metrics/ HTTP/1.1\r\n\r\n"), 404);
}

Test(ops, route_other_method_405)
{
	cr_assert_eq(route("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), 405);
	cr_assert_eq(route("HEAD /metrics HTTP/1.1\r\n\r\n"), 405);
	cr_assert_eq(route("get /metrics HTTP/1.1\r\n\r\n"), 405);
	cr_assert_eq(route("GETX /metrics HTTP/1.1\r\n\r\n"), 405);
}

Test(ops, route_malformed_400)
{
	cr_assert_eq(route("garbage\r\n\r\n"), 400);
	cr_assert_eq(route("GET /metrics\r\n\r\n"), 400);
	cr_assert_eq(route("GET /metrics FTP/1.1\r\n\r\n"), 400);
	cr_assert_eq(route("\r\n\r\n"), 400);
	cr_assert_eq(route("\x01\x02\x03 \xff\xfe\r\n\r\n"), 400);
}

Test(ops, route_incomplete_0)
{
	cr_assert_eq(route(""), 0);
	cr_assert_eq(route("GET /metrics HTTP/1.1"), 0);
	cr_assert_eq(route("GET /metrics HTTP/1.1\r\nHost: x\r\n"), 0);
	cr_assert_eq(route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r"), 0);
}

Test(ops, route_head_too_long_400)
{
	char *big = malloc(HTTPSTATS_REQ_MAX);

	cr_assert_not_null(big);
	memset(big, 'a', HTTPSTATS_REQ_MAX);
	memcpy(big, "GET /metrics HTTP/1.1\r\nX: ", 26);
	cr_assert_eq(httpstats_route(big, HTTPSTATS_REQ_MAX - 1), 0);
	cr_assert_eq(httpstats_route(big, HTTPSTATS_REQ_MAX), 400);
	free(big);
}

Test(ops, route_bare_lf_line_endings)
{
	cr_assert_eq(route("GET /metrics HTTP/1.1\nHost: x\n\n"), 200);
	cr_assert_eq(route("GET /other HTTP/1.1\nHost: x\n\n"), 404);
	cr_assert_eq(route("POST /metrics HTTP/1.1\n\n"), 405);
	cr_assert_eq(route("GET /metrics HTTP/1.1\nHost: x\n"), 0);
}

/* The router is given len bytes: it must not look past them. The request is placed flush
 * against a PROT_NONE page, so any read beyond len faults. */
static int route_guarded(const char *s)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t n = strlen(s);
	char *map = mmap(NULL, (size_t)pg * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	int code;

	cr_assert_neq(map, MAP_FAILED);
	cr_assert_eq(mprotect(map + pg, (size_t)pg, PROT_NONE), 0);
	memcpy(map + pg - n, s, n);
	code = httpstats_route(map + pg - n, n);
	munmap(map, (size_t)pg * 2);
	return code;
}

Test(ops, route_reads_only_len_bytes)
{
	cr_assert_eq(route_guarded("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
	cr_assert_eq(route_guarded("GET /metrics HTTP/1.1\r\nHost: x\r\n"), 0);
	cr_assert_eq(route_guarded("garbage\r\n\r\n"), 400);
	cr_assert_eq(route_guarded("GET /metrics HTTP/1.1\n\n"), 200);
	/* a path followed by a space and then the end of the head: the version check must
	 * not compare 7 bytes that are not there */
	cr_assert_eq(route_guarded("GET /x \r\n\r\n"), 400);
	cr_assert_eq(route_guarded("GET /metrics \n\n"), 400);
}

/* ---- accesslog_format --------------------------------------------------- */

static struct addr v4(const char *ip, uint16_t port)
{
	struct addr a;

	memset(&a, 0, sizeof(a));
	a.u.in4.sin_family = AF_INET;
	a.u.in4.sin_port = htons(port);
	cr_assert_eq(inet_pton(AF_INET, ip, &a.u.in4.sin_addr), 1);
	a.len = sizeof(a.u.in4);
	return a;
}

static struct addr v6(const char *ip, uint16_t port)
{
	struct addr a;

	memset(&a, 0, sizeof(a));
	a.u.in6.sin6_family = AF_INET6;
	a.u.in6.sin6_port = htons(port);
	cr_assert_eq(inet_pton(AF_INET6, ip, &a.u.in6.sin6_addr), 1);
	a.len = sizeof(a.u.in6);
	return a;
}

/* Formats e and checks the exact line, and that a buffer one byte short gives 0. */
static void expect_line(bool json, const struct accesslog_entry *e, const char *want)
{
	char buf[1024];
	size_t n = accesslog_format(buf, sizeof(buf), json, e);
	size_t wn = strlen(want);

	cr_assert_eq(n, wn, "length %zu, want %zu: got '%s', want '%s'", n, wn, buf, want);
	cr_assert_str_eq(buf, want);
	/* exactly enough room for the line and its NUL */
	memset(buf, 'Z', sizeof(buf));
	cr_assert_eq(accesslog_format(buf, wn + 1, json, e), wn);
	cr_assert_eq(memcmp(buf, want, wn), 0);
	/* one byte short, and far too short: 0 */
	cr_assert_eq(accesslog_format(buf, wn, json, e), 0, "line of %zu bytes fits in %zu?", wn,
		     wn);
	cr_assert_eq(accesslog_format(buf, 10, json, e), 0);
	cr_assert_eq(accesslog_format(buf, 1, json, e), 0);
}

Test(ops, accesslog_text_ipv4)
{
	struct addr c = v4("127.0.0.1", 50698), u = v4("127.0.0.1", 8081);
	struct accesslog_entry e = {
		.end_realtime_ms = 1700000000123ULL, .listener = "web", .client = &c,
		.upstream = &u, .bytes_in = 79, .bytes_out = 212, .duration_ms = 363,
		.reason = "normal",
	};

	expect_line(false, &e,
		    "2023-11-14T22:13:20.123Z listener=web client=127.0.0.1:50698 "
		    "upstream=127.0.0.1:8081 "
		    "bytes_in=79 bytes_out=212 duration_ms=363 reason=normal truncated=none\n");
}

Test(ops, accesslog_text_ipv6_and_no_upstream)
{
	struct addr c = v6("2001:db8::1", 443);
	struct accesslog_entry e = {
		.end_realtime_ms = 5, .listener = "api.v2-x_1", .client = &c, .upstream = NULL,
		.bytes_in = 0, .bytes_out = 0, .duration_ms = 0, .reason = "connect_failed",
	};

	expect_line(false, &e,
		    "1970-01-01T00:00:00.005Z listener=api.v2-x_1 client=[2001:db8::1]:443 "
		    "upstream=- bytes_in=0 "
		    "bytes_out=0 duration_ms=0 reason=connect_failed truncated=none\n");
}

Test(ops, accesslog_text_big_numbers_and_unknown_client)
{
	struct addr u = v6("::1", 9000);
	struct accesslog_entry e = {
		.end_realtime_ms = 1700000000999ULL, .client = NULL, .upstream = &u,
		.bytes_in = 18446744073709551615ULL, .bytes_out = 1ULL << 40,
		.duration_ms = 86400000, .reason = "client_reset",
	};

	/* no listener name: "-" */
	expect_line(false, &e,
		    "2023-11-14T22:13:20.999Z listener=- client=- upstream=[::1]:9000 "
		    "bytes_in=18446744073709551615 bytes_out=1099511627776 duration_ms=86400000 "
		    "reason=client_reset truncated=none\n");
}

Test(ops, accesslog_json_ipv4)
{
	struct addr c = v4("127.0.0.1", 50698), u = v4("10.1.2.3", 8081);
	struct accesslog_entry e = {
		.end_realtime_ms = 1700000000123ULL, .listener = "web", .client = &c,
		.upstream = &u, .bytes_in = 79, .bytes_out = 212, .duration_ms = 363,
		.reason = "normal",
	};

	expect_line(true, &e,
		    "{\"time\":\"2023-11-14T22:13:20.123Z\",\"listener\":\"web\","
		    "\"client\":\"127.0.0.1:50698\","
		    "\"upstream\":\"10.1.2.3:8081\",\"bytes_client_to_upstream\":79,"
		    "\"bytes_upstream_to_client\":212,\"duration_ms\":363,\"reason\":\"normal\","
		    "\"truncated\":\"none\"}\n");
}

Test(ops, accesslog_json_ipv6_and_no_upstream)
{
	struct addr c = v6("::1", 40000);
	struct accesslog_entry e = {
		.end_realtime_ms = 0, .client = &c, .upstream = NULL,
		.bytes_in = 12, .bytes_out = 0, .duration_ms = 7, .reason = "connect_failed",
	};

	/* no listener name: "-" */
	expect_line(true, &e,
		    "{\"time\":\"1970-01-01T00:00:00.000Z\",\"listener\":\"-\","
		    "\"client\":\"[::1]:40000\","
		    "\"upstream\":\"-\",\"bytes_client_to_upstream\":12,"
		    "\"bytes_upstream_to_client\":0,\"duration_ms\":7,"
		    "\"reason\":\"connect_failed\",\"truncated\":\"none\"}\n");
}

/* ---- accesslog double buffer -------------------------------------------- */

static struct accesslog *al_new(uint64_t *dropped)
{
	struct accesslog *al = calloc(1, sizeof(*al));

	cr_assert_not_null(al);
	al->fd = -1;
	al->dropped = dropped;
	*dropped = 0;
	return al;
}

/* Entry number i: every line differs (bytes_in = i), same length for i < 10000 (padded). */
static struct accesslog_entry entry(uint64_t i, const struct addr *c, const struct addr *u)
{
	return (struct accesslog_entry){ .end_realtime_ms = 1700000000000ULL + i, .client = c,
					 .upstream = u, .bytes_in = 10000 + i, .bytes_out = 2 * i,
					 .duration_ms = i % 1000, .reason = "normal" };
}

/* A growing copy of everything expected, to compare with what is "written". */
struct text {
	char *p;
	size_t len, cap;
};

static void text_add(struct text *t, const char *s, size_t n)
{
	if (t->len + n > t->cap) {
		t->cap = (t->len + n) * 2;
		t->p = realloc(t->p, t->cap);
		cr_assert_not_null(t->p);
	}
	memcpy(t->p + t->len, s, n);
	t->len += n;
}

static void add_expect(struct accesslog *al, struct text *want, uint64_t i, const struct addr *c,
		       const struct addr *u)
{
	struct accesslog_entry e = entry(i, c, u);
	char line[512];
	size_t n = accesslog_format(line, sizeof(line), al->json, &e);

	cr_assert_gt(n, 0);
	cr_assert(accesslog_add(al, &e), "add of line %llu refused with %zu bytes buffered",
		  (unsigned long long)i, al->fill_len);
	text_add(want, line, n);
}

/* Checks one chunk from next(): whole lines, at most ACCESSLOG_WRITE_MAX bytes. */
static void check_chunk(const char *p, unsigned int n, bool starts_line)
{
	cr_assert_gt(n, 0);
	cr_assert_leq(n, ACCESSLOG_WRITE_MAX, "chunk of %u bytes", n);
	cr_assert_eq(p[n - 1], '\n', "chunk does not end with a whole line");
	if (starts_line)
		cr_assert(p[0] == '2' || p[0] == '{', "chunk starts mid-line: '%.20s'", p);
}

Test(ops, accesslog_next_whole_lines)
{
	struct addr c = v4("127.0.0.1", 50000), u = v4("127.0.0.1", 8081);
	struct text want = { 0 }, got = { 0 };
	uint64_t dropped;
	struct accesslog *al = al_new(&dropped);
	const char *p;
	unsigned int n;
	int chunks = 0;

	cr_assert_null(accesslog_next(al, &n), "a chunk from an empty log");
	for (uint64_t i = 0; i < 300; i++)
		add_expect(al, &want, i, &c, &u);
	cr_assert_gt(want.len, 3 * ACCESSLOG_WRITE_MAX, "test lines too short (%zu bytes)",
		     want.len);
	while ((p = accesslog_next(al, &n)) != NULL) {
		cr_assert_lt(chunks++, 1000, "next() never runs dry");
		check_chunk(p, n, true);
		/* the same chunk again while its write is in flight */
		unsigned int n2 = 0;

		cr_assert_eq(accesslog_next(al, &n2), p);
		cr_assert_eq(n2, n);
		text_add(&got, p, n);
		accesslog_done(al, (int)n);
	}
	cr_assert_geq(chunks, 4);
	cr_assert_eq(got.len, want.len);
	cr_assert_eq(memcmp(got.p, want.p, want.len), 0, "written bytes differ from the lines");
	cr_assert_eq(dropped, 0);
	free(want.p);
	free(got.p);
	free(al);
}

Test(ops, accesslog_short_writes_continue)
{
	struct addr c = v6("::1", 50000), u = v4("127.0.0.1", 8081);
	struct text want = { 0 }, got = { 0 };
	uint64_t dropped;
	struct accesslog *al = al_new(&dropped);
	const char *p;
	unsigned int n;
	int rounds = 0;

	al->json = true;
	for (uint64_t i = 0; i < 100; i++)
		add_expect(al, &want, i, &c, &u);
	/* writes that take 1, 7, 100, ... bytes: each continues where the last stopped */
	static const unsigned int takes[] = { 1, 7, 100, 333, 4096, 2, 1000 };

	while ((p = accesslog_next(al, &n)) != NULL) {
		unsigned int k = takes[rounds % 7];

		cr_assert_lt(rounds++, 10000, "next() never runs dry");
		cr_assert_leq(n, ACCESSLOG_WRITE_MAX);
		cr_assert_eq(p[n - 1], '\n', "chunk does not end with a whole line");
		cr_assert_eq(memcmp(p, want.p + got.len, n), 0,
			     "chunk at offset %zu does not continue the stream", got.len);
		if (k > n)
			k = n;
		text_add(&got, p, k);
		accesslog_done(al, (int)k);
		/* lines added while a buffer is in flight go to the other one */
		if (rounds == 3)
			for (uint64_t i = 100; i < 130; i++)
				add_expect(al, &want, i, &c, &u);
	}
	cr_assert_eq(got.len, want.len, "wrote %zu of %zu bytes", got.len, want.len);
	cr_assert_eq(memcmp(got.p, want.p, want.len), 0, "written bytes differ from the lines");
	cr_assert_eq(dropped, 0);
	free(want.p);
	free(got.p);
	free(al);
}

Test(ops, accesslog_write_error_counts_dropped)
{
	struct addr c = v4("127.0.0.1", 50000), u = v4("127.0.0.1", 8081);
	struct text want = { 0 };
	uint64_t dropped;
	struct accesslog *al = al_new(&dropped);
	const char *p;
	unsigned int n;
	size_t line;

	/* a whole buffer fails: every line in it is dropped */
	for (uint64_t i = 0; i < 10; i++)
		add_expect(al, &want, i, &c, &u);
	line = want.len / 10;
	p = accesslog_next(al, &n);
	cr_assert_not_null(p);
	cr_assert_eq(n, want.len);
	accesslog_done(al, -EIO);
	cr_assert_eq(dropped, 10, "dropped %llu, want 10", (unsigned long long)dropped);
	cr_assert_null(accesslog_next(al, &n), "the failed buffer is offered again");

	/* 3 lines and 5 bytes written, then a failure: the 7 lines not (wholly) written */
	want.len = 0;
	for (uint64_t i = 0; i < 10; i++)
		add_expect(al, &want, i, &c, &u);
	p = accesslog_next(al, &n);
	cr_assert_not_null(p);
	accesslog_done(al, (int)(3 * line + 5));
	p = accesslog_next(al, &n);
	cr_assert_not_null(p);
	cr_assert_eq(memcmp(p, want.p + 3 * line + 5, n), 0);
	accesslog_done(al, -EIO);
	cr_assert_eq(dropped, 17, "dropped %llu, want 10 + 7", (unsigned long long)dropped);
	cr_assert_null(accesslog_next(al, &n));

	/* and it works again afterwards */
	want.len = 0;
	add_expect(al, &want, 42, &c, &u);
	p = accesslog_next(al, &n);
	cr_assert_not_null(p);
	cr_assert_eq(n, want.len);
	cr_assert_eq(memcmp(p, want.p, n), 0);
	accesslog_done(al, (int)n);
	cr_assert_null(accesslog_next(al, &n));
	cr_assert_eq(dropped, 17);
	free(want.p);
	free(al);
}

Test(ops, accesslog_full_buffer_drops_and_counts)
{
	struct addr c = v6("2001:db8::dead:beef", 65535), u = v6("2001:db8::1", 65535);
	struct text want = { 0 }, got = { 0 };
	uint64_t dropped;
	struct accesslog *al = al_new(&dropped);
	struct accesslog_entry e;
	const char *p;
	unsigned int n;
	uint64_t i = 0;
	size_t before;

	/* fill the fill buffer until a line is refused */
	for (;;) {
		cr_assert_lt(i, 100000, "the buffer never fills");
		e = entry(i, &c, &u);
		before = al->fill_len;
		if (!accesslog_add(al, &e))
			break;
		char line[512];
		size_t k = accesslog_format(line, sizeof(line), false, &e);

		text_add(&want, line, k);
		i++;
	}
	cr_assert_eq(dropped, 1);
	cr_assert_eq(al->fill_len, before, "a refused line changed the buffer");
	cr_assert_leq(al->fill_len, ACCESSLOG_BUF);
	cr_assert_gt(al->fill_len, ACCESSLOG_BUF - 200, "refused with %zu of %d bytes used",
		     al->fill_len, ACCESSLOG_BUF);
	cr_assert_eq(al->fill_len, want.len);
	cr_assert_not(accesslog_add(al, &e));
	cr_assert_eq(dropped, 2);

	/* once the buffer moves into flight, there is room again; the in-flight one is kept */
	p = accesslog_next(al, &n);
	cr_assert_not_null(p);
	check_chunk(p, n, true);
	e = entry(i, &c, &u);
	cr_assert(accesslog_add(al, &e), "no room after the buffer went into flight");
	{
		char line[512];
		size_t k = accesslog_format(line, sizeof(line), false, &e);

		text_add(&want, line, k);
	}
	/* fill the second buffer too: the next line is refused while the first is in flight */
	for (uint64_t j = i + 1;; j++) {
		cr_assert_lt(j, 200000);
		e = entry(j, &c, &u);
		if (!accesslog_add(al, &e))
			break;
		char line[512];
		size_t k = accesslog_format(line, sizeof(line), false, &e);

		text_add(&want, line, k);
	}
	cr_assert_eq(dropped, 3);
	/* everything that was accepted comes out, in order */
	for (int rounds = 0; p != NULL; rounds++) {
		cr_assert_lt(rounds, 1000);
		check_chunk(p, n, true);
		text_add(&got, p, n);
		accesslog_done(al, (int)n);
		p = accesslog_next(al, &n);
	}
	cr_assert_eq(got.len, want.len);
	cr_assert_eq(memcmp(got.p, want.p, want.len), 0);
	cr_assert_eq(dropped, 3);
	free(want.p);
	free(got.p);
	free(al);
}

/* accesslog.c: "Whole lines, at most ACCESSLOG_WRITE_MAX bytes (a single longer line goes
 * alone)". Lines from the proxy are never that long, but a long reason can make one. */
Test(ops, accesslog_overlong_line_goes_alone)
{
	struct addr c = v4("127.0.0.1", 1), u = v4("127.0.0.1", 2);
	uint64_t dropped;
	struct accesslog *al = al_new(&dropped);
	char *reason = malloc(5001);
	struct accesslog_entry e = entry(1, &c, &u);
	const char *p;
	unsigned int n;
	char line[8192];
	size_t long_len, short_len;

	memset(reason, 'r', 5000);
	reason[5000] = '\0';
	e.reason = reason;
	long_len = accesslog_format(line, sizeof(line), false, &e);
	cr_assert_gt(long_len, ACCESSLOG_WRITE_MAX);
	cr_assert(accesslog_add(al, &e));
	e = entry(2, &c, &u);
	short_len = accesslog_format(line, sizeof(line), false, &e);
	cr_assert(accesslog_add(al, &e));
	cr_assert(accesslog_add(al, &e));
	p = accesslog_next(al, &n);
	cr_assert_not_null(p);
	cr_assert_eq(n, long_len, "the over-long line went out with %zu more bytes (%u, want %zu)",
		     (size_t)n - long_len, n, long_len);
	accesslog_done(al, (int)n);
	p = accesslog_next(al, &n);
	cr_assert_not_null(p);
	cr_assert_eq(n, 2 * short_len);
	accesslog_done(al, (int)n);
	cr_assert_null(accesslog_next(al, &n));
	free(reason);
	free(al);
}

/* ---- stats_render ------------------------------------------------------- */

struct metric {
	char key[200]; /* name{labels} */
	char value[64];
};

struct parsed {
	struct metric m[256];
	int n;
	char help[64][80];
	int nhelp;
	char type[64][80];
	char type_kind[64][16];
	int ntype;
};

static void parse_metrics(const char *text, struct parsed *out)
{
	const char *p = text;
	char cur[80] = "";
	char cur_kind[16] = "";

	memset(out, 0, sizeof(*out));
	while (*p) {
		const char *nl = strchr(p, '\n');
		char line[512];
		size_t len;

		cr_assert_not_null(nl, "output does not end with a newline: '%s'", p);
		len = (size_t)(nl - p);
		cr_assert_lt(len, sizeof(line));
		memcpy(line, p, len);
		line[len] = '\0';
		p = nl + 1;
		cr_assert_gt(len, 0, "an empty line in the output");
		if (strncmp(line, "# HELP ", 7) == 0) {
			char name[80];

			cr_assert_eq(sscanf(line + 7, "%79s", name), 1);
			cr_assert(strlen(line) > 8 + strlen(name), "HELP without text: '%s'", line);
			for (int i = 0; i < out->nhelp; i++)
				cr_assert_str_neq(out->help[i], name, "two HELP lines for %s", name);
			cr_assert_lt(out->nhelp, 64);
			strcpy(out->help[out->nhelp++], name);
			continue;
		}
		if (strncmp(line, "# TYPE ", 7) == 0) {
			char name[80], kind[16];

			cr_assert_eq(sscanf(line + 7, "%79s %15s", name, kind), 2, "'%s'", line);
			cr_assert(strcmp(kind, "counter") == 0 || strcmp(kind, "gauge") == 0 ||
					  strcmp(kind, "histogram") == 0,
				  "type '%s'", kind);
			cr_assert(out->nhelp > 0 && strcmp(out->help[out->nhelp - 1], name) == 0,
				  "TYPE %s not right after its HELP", name);
			for (int i = 0; i < out->ntype; i++)
				cr_assert_str_neq(out->type[i], name, "two TYPE lines for %s", name);
			strcpy(out->type[out->ntype], name);
			strcpy(out->type_kind[out->ntype++], kind);
			strcpy(cur, name);
			strcpy(cur_kind, kind);
			continue;
		}
		cr_assert_neq(line[0], '#', "unknown comment '%s'", line);
		/* a sample: it belongs to the family of the last TYPE line */
		char *sp = strrchr(line, ' ');
		size_t nl2;

		cr_assert_not_null(sp, "sample without a value: '%s'", line);
		*sp = '\0';
		nl2 = strcspn(line, "{");
		cr_assert(cur[0], "sample '%s' before any TYPE", line);
		if (strcmp(cur_kind, "histogram") == 0) {
			size_t cl = strlen(cur);

			cr_assert(strncmp(line, cur, cl) == 0 &&
					  (strcmp(line + cl, "_sum") == 0 ||
					   strcmp(line + cl, "_count") == 0 ||
					   strncmp(line + cl, "_bucket{", 8) == 0),
				  "sample '%s' in histogram %s", line, cur);
		} else {
			cr_assert(nl2 == strlen(cur) && strncmp(line, cur, nl2) == 0,
				  "sample '%s' under TYPE %s", line, cur);
		}
		for (int i = 0; i < out->n; i++)
			cr_assert_str_neq(out->m[i].key, line, "sample '%s' twice", line);
		cr_assert_lt(out->n, 256);
		cr_assert_lt(strlen(line), sizeof(out->m[0].key));
		strcpy(out->m[out->n].key, line);
		snprintf(out->m[out->n].value, sizeof(out->m[0].value), "%s", sp + 1);
		out->n++;
	}
}

static const char *val(const struct parsed *ps, const char *key)
{
	for (int i = 0; i < ps->n; i++)
		if (strcmp(ps->m[i].key, key) == 0)
			return ps->m[i].value;
	cr_assert_fail("no sample '%s'", key);
	return NULL;
}

static void expect(const struct parsed *ps, const char *key, const char *want)
{
	cr_assert_str_eq(val(ps, key), want, "%s", key);
}

static void expect_u(const struct parsed *ps, const char *key, unsigned long long want)
{
	char w[32];

	snprintf(w, sizeof(w), "%llu", want);
	expect(ps, key, w);
}

static int count_prefix(const struct parsed *ps, const char *prefix)
{
	int k = 0;

	for (int i = 0; i < ps->n; i++)
		k += strncmp(ps->m[i].key, prefix, strlen(prefix)) == 0;
	return k;
}

static struct stats_snapshot *snaps;
static struct parsed parsed;

static void fill_worker(struct worker_stats *st, struct loop_stats *ls, uint64_t base)
{
	memset(st, 0, sizeof(*st));
	memset(ls, 0, sizeof(*ls));
	st->accepted = base + 1;
	st->accept_errors = base + 2;
	st->accept_backoffs = base + 3;
	st->accept_overflow = base + 4;
	for (int r = 0; r < CLOSE__COUNT; r++)
		st->closed[r] = base + 10 + (uint64_t)r;
	st->bytes[0] = base * 1000000 + 5;
	st->bytes[1] = base * 2000000 + 6;
	st->connect_attempts = base + 20;
	st->connect_errors = base + 21;
	for (int b = 0; b <= STATS_CONNECT_BUCKETS; b++)
		st->connect_hist[b] = (b % 3 == 0) ? base + (uint64_t)b : 0;
	st->connect_sum_us = base * 1000 + 1500;
	st->buf_exhausted = base + 30;
	st->backpressure = base + 31;
	st->stale_cqes = base + 32;
	st->log_dropped = base + 33;
	st->fallback_recvs = base + 34;
	st->truncated[0] = base + 35;
	st->truncated[1] = base + 36;
	ls->enters = base + 40;
	ls->submitted = base + 41;
	ls->cqes = base + 42;
	ls->sq_full = base + 43;
	ls->cq_overflow = base + 44;
	ls->cq_lost = base + 45;
	ls->enter_retries = base + 46;
	ls->sq_backlog = base + 47;
}

static char *render(int n)
{
	size_t need = stats_render(NULL, 0, snaps, n);
	char *buf = malloc(need + 1);
	size_t got;

	cr_assert_gt(need, 100);
	cr_assert_not_null(buf);
	got = stats_render(buf, need + 1, snaps, n);
	cr_assert_eq(got, need, "rendered %zu bytes, sized %zu", got, need);
	cr_assert_eq(strlen(buf), need);
	return buf;
}

/* A worker with no listener publishes an empty table (never NULL: memcpy's source). */
static const struct stats_listener no_listener[1];

/* Every counter of one listener distinct: base + a field's own offset. */
static struct stats_listener listener_at(const char *name, uint32_t active, uint64_t base)
{
	struct stats_listener l;

	memset(&l, 0, sizeof(l));
	snprintf(l.name, sizeof(l.name), "%s", name);
	l.active = active;
	l.st.accepted = base + 1;
	for (int r = 0; r < CLOSE__COUNT; r++)
		l.st.closed[r] = base + 10 + (uint64_t)r;
	l.st.bytes[0] = base * 1000000 + 5;
	l.st.bytes[1] = base * 2000000 + 6;
	l.st.truncated[0] = base + 35;
	l.st.truncated[1] = base + 36;
	l.st.denied = base + 50;
	for (int k = 0; k < 3; k++)
		l.st.limited[k] = base + 60 + (uint64_t)k;
	l.st.sni_routed = base + 70;
	l.st.overflow = base + 80;
	return l;
}

static struct stats_pool pool_named(const char *name, bool on_backup)
{
	struct stats_pool p;

	memset(&p, 0, sizeof(p));
	snprintf(p.name, sizeof(p.name), "%s", name);
	p.on_backup = on_backup;
	return p;
}

/* The value of sample name{listener="l"[,label="v"]}. */
static void expect_l(const struct parsed *ps, const char *name, const char *l, const char *label,
		     const char *v, unsigned long long want)
{
	char key[200];

	if (label != NULL)
		snprintf(key, sizeof(key), "%s{listener=\"%s\",%s=\"%s\"}", name, l, label, v);
	else
		snprintf(key, sizeof(key), "%s{listener=\"%s\"}", name, l);
	expect_u(ps, key, want);
}

Test(ops, stats_render_sums_workers)
{
	static const char *const reasons[] = { "normal",  "client_reset", "upstream_reset",
					       "connect_failed", "shutdown", "resource",
					       "timeout", "protocol",	  "denied",
					       "limited" };
	static const char *const limits[] = { "conns", "rate", "table" };
	/* a listener runs in every worker: same name, summed; worker 1 lists them in another
	 * order and has one (tls, just added by SIGHUP) that worker 0 does not have yet */
	struct stats_listener l0[2] = { listener_at("web", 2, 100), listener_at("api", 3, 200) };
	struct stats_listener l1[3] = { listener_at("api", 40, 7000), listener_at("web", 5, 8000),
					listener_at("tls", 6, 9000) };
	static const struct {
		const char *name;
		uint64_t b0, b1; /* the bases summed; 0: absent in that worker */
		int nw;		 /* workers that have it */
		uint64_t active;
	} want[] = {
		{ "web", 100, 8000, 2, 7 },
		{ "api", 200, 7000, 2, 43 },
		{ "tls", 9000, 0, 1, 6 },
	};
	struct stats_pool p0[1] = { pool_named("web", false) };
	struct worker_stats st[2];
	struct loop_stats ls[2];
	struct stats_backend b0[2], b1[2];
	char *text;

	snaps = calloc(2, sizeof(*snaps));
	cr_assert_not_null(snaps);
	fill_worker(&st[0], &ls[0], 100);
	fill_worker(&st[1], &ls[1], 7000);
	ls[0].backend = ls[1].backend = "epoll";
	memset(b0, 0, sizeof(b0));
	memset(b1, 0, sizeof(b1));
	b0[0] = (struct stats_backend){ .addr = v4("127.0.0.1", 8081), .active = 2, .up = 1 };
	b0[1] = (struct stats_backend){ .addr = v4("127.0.0.1", 8082), .active = 1, .up = 1 };
	b1[0] = (struct stats_backend){ .addr = v4("127.0.0.1", 8082), .active = 3, .up = 0 };
	b1[1] = (struct stats_backend){ .addr = v6("::1", 9000), .active = 4, .up = 1 };
	stats_publish(&snaps[0], 5, &st[0], &ls[0], b0, 2, l0, 2, p0, 1);
	stats_publish(&snaps[1], 49, &st[1], &ls[1], b1, 2, l1, 3, p0, 1);
	cr_assert_eq(snaps[0].seq % 2, 0, "seqlock left odd");
	cr_assert_gt(snaps[0].seq, 0);

	/* a read gives the published figures back */
	{
		struct stats_snapshot *copy = calloc(1, sizeof(*copy));

		cr_assert_not_null(copy);
		stats_read(&snaps[1], copy);
		cr_assert_eq(copy->active, 49);
		cr_assert_eq(copy->st.accepted, 7001);
		cr_assert_eq(copy->ls.cqes, 7042);
		cr_assert_eq(copy->nbackends, 2);
		cr_assert(addr_equal(&copy->backends[1].addr, &b1[1].addr));
		cr_assert_eq(copy->nlisteners, 3);
		cr_assert_str_eq(copy->listeners[2].name, "tls");
		cr_assert_eq(copy->listeners[2].st.denied, 9050);
		cr_assert_eq(copy->listeners[0].active, 40);
		cr_assert_eq(copy->npools, 1);
		cr_assert_str_eq(copy->pools[0].name, "web");
		free(copy);
	}
	/* republishing with backends NULL keeps the backend and pool tables, not the
	 * listeners: those are always the ones given */
	stats_publish(&snaps[1], 49, &st[1], &ls[1], NULL, 0, l1, 1, NULL, 0);
	cr_assert_eq(snaps[1].nbackends, 2);
	cr_assert_eq(snaps[1].npools, 1);
	cr_assert_eq(snaps[1].nlisteners, 1);
	stats_publish(&snaps[1], 49, &st[1], &ls[1], NULL, 0, l1, 3, NULL, 0);
	cr_assert_eq(snaps[1].nbackends, 2);
	cr_assert_eq(snaps[1].nlisteners, 3);

	stats_reloads[0] = 5;
	stats_reloads[1] = 2;
	text = render(2);
	parse_metrics(text, &parsed);

	expect_u(&parsed, "uproxy_workers{backend=\"epoll\"}", 2);
	cr_assert_eq(sizeof(reasons) / sizeof(reasons[0]), CLOSE__COUNT);
	for (int r = 0; r < CLOSE__COUNT; r++)
		cr_assert_str_eq(close_reason_name((enum close_reason)r), reasons[r]);
	/* the per-session series: one sample per listener (and label), never one per worker */
	cr_assert_eq(count_prefix(&parsed, "uproxy_connections_accepted_total"), 3);
	cr_assert_eq(count_prefix(&parsed, "uproxy_connections_active"), 3);
	cr_assert_eq(count_prefix(&parsed, "uproxy_connections_closed_total{"),
		     3 * (CLOSE__COUNT + 1));
	cr_assert_eq(count_prefix(&parsed, "uproxy_bytes_total{"), 3 * 2);
	cr_assert_eq(count_prefix(&parsed, "uproxy_connections_truncated_total{"), 3 * 2);
	cr_assert_eq(count_prefix(&parsed, "uproxy_connections_denied_total{"), 3);
	cr_assert_eq(count_prefix(&parsed, "uproxy_connections_limited_total{"), 3 * 3);
	cr_assert_eq(count_prefix(&parsed, "uproxy_sni_routed_total{"), 3);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		const char *n = want[i].name;
		uint64_t b = want[i].b0 + want[i].b1, k = (uint64_t)want[i].nw;

		expect_l(&parsed, "uproxy_connections_accepted_total", n, NULL, NULL, b + k * 1);
		expect_l(&parsed, "uproxy_connections_active", n, NULL, NULL, want[i].active);
		for (int r = 0; r < CLOSE__COUNT; r++)
			expect_l(&parsed, "uproxy_connections_closed_total", n, "reason",
				 reasons[r], b + k * (10 + (uint64_t)r));
		/* accepted beyond every free slot (or while stopping): the listener's overflow */
		expect_l(&parsed, "uproxy_connections_closed_total", n, "reason", "limit",
			 b + k * 80);
		expect_l(&parsed, "uproxy_bytes_total", n, "direction", "client_to_upstream",
			 b * 1000000 + k * 5);
		expect_l(&parsed, "uproxy_bytes_total", n, "direction", "upstream_to_client",
			 b * 2000000 + k * 6);
		expect_l(&parsed, "uproxy_connections_truncated_total", n, "side", "client",
			 b + k * 35);
		expect_l(&parsed, "uproxy_connections_truncated_total", n, "side", "upstream",
			 b + k * 36);
		expect_l(&parsed, "uproxy_connections_denied_total", n, NULL, NULL, b + k * 50);
		for (int j = 0; j < 3; j++)
			expect_l(&parsed, "uproxy_connections_limited_total", n, "limit",
				 limits[j], b + k * (60 + (uint64_t)j));
		expect_l(&parsed, "uproxy_sni_routed_total", n, NULL, NULL, b + k * 70);
	}
	/* spot checks written out, so a wrong helper cannot hide a wrong label */
	expect_u(&parsed, "uproxy_connections_accepted_total{listener=\"web\"}", 101 + 8001);
	expect_u(&parsed, "uproxy_connections_denied_total{listener=\"api\"}", 250 + 7050);
	expect_u(&parsed, "uproxy_connections_limited_total{listener=\"tls\",limit=\"table\"}",
		 9062);
	expect_u(&parsed, "uproxy_connections_closed_total{listener=\"web\",reason=\"denied\"}",
		 118 + 8018);
	/* process-wide */
	expect_u(&parsed, "uproxy_config_reloads_total{result=\"ok\"}", 5);
	expect_u(&parsed, "uproxy_config_reloads_total{result=\"failed\"}", 2);
	cr_assert_eq(count_prefix(&parsed, "uproxy_config_reloads_total"), 2);
	/* the worker-wide series */
	expect_u(&parsed, "uproxy_upstream_connect_attempts_total", 120 + 7020);
	expect_u(&parsed, "uproxy_upstream_connect_failures_total", 121 + 7021);
	expect_u(&parsed, "uproxy_buffer_ring_exhausted_total", 130 + 7030);
	expect_u(&parsed, "uproxy_backpressure_pauses_total", 131 + 7031);
	expect_u(&parsed, "uproxy_stale_cqes_total", 132 + 7032);
	expect_u(&parsed, "uproxy_access_log_dropped_total", 133 + 7033);
	expect_u(&parsed, "uproxy_fallback_receives_total", 134 + 7034);
	expect_u(&parsed, "uproxy_accept_errors_total", 102 + 7002);
	expect_u(&parsed, "uproxy_ring_enters_total", 140 + 7040);
	expect_u(&parsed, "uproxy_ring_submissions_total", 141 + 7041);
	expect_u(&parsed, "uproxy_ring_cqes_total", 142 + 7042);
	expect_u(&parsed, "uproxy_ring_cq_overflows_total", 144 + 7044);
	expect_u(&parsed, "uproxy_ring_cq_lost_total", 145 + 7045);
	expect_u(&parsed, "uproxy_ring_enter_retries_total", 146 + 7046);
	expect_u(&parsed, "uproxy_ring_sq_backlog_total", 147 + 7047);
	free(text);
	free(snaps);
}

Test(ops, stats_render_help_and_type_for_each_metric)
{
	static const struct {
		const char *name, *kind;
	} families[] = {
		{ "uproxy_workers", "gauge" },
		{ "uproxy_connections_accepted_total", "counter" },
		{ "uproxy_connections_active", "gauge" },
		{ "uproxy_connections_closed_total", "counter" },
		{ "uproxy_bytes_total", "counter" },
		{ "uproxy_connections_denied_total", "counter" },
		{ "uproxy_connections_limited_total", "counter" },
		{ "uproxy_sni_routed_total", "counter" },
		{ "uproxy_pool_backup_active", "gauge" },
		{ "uproxy_config_reloads_total", "counter" },
		{ "uproxy_upstream_connect_attempts_total", "counter" },
		{ "uproxy_upstream_connect_failures_total", "counter" },
		{ "uproxy_upstream_connect_duration_seconds", "histogram" },
		{ "uproxy_upstream_up", "gauge" },
		{ "uproxy_upstream_active_sessions", "gauge" },
		{ "uproxy_buffer_ring_exhausted_total", "counter" },
		{ "uproxy_fallback_receives_total", "counter" },
		{ "uproxy_connections_truncated_total", "counter" },
		{ "uproxy_backpressure_pauses_total", "counter" },
		{ "uproxy_ring_enters_total", "counter" },
		{ "uproxy_ring_submissions_total", "counter" },
		{ "uproxy_ring_cqes_total", "counter" },
		{ "uproxy_ring_cq_overflows_total", "counter" },
		{ "uproxy_ring_cq_lost_total", "counter" },
		{ "uproxy_ring_enter_retries_total", "counter" },
		{ "uproxy_ring_sq_backlog_total", "counter" },
		{ "uproxy_stale_cqes_total", "counter" },
		{ "uproxy_accept_errors_total", "counter" },
		{ "uproxy_access_log_dropped_total", "counter" },
	};
	const int nf = (int)(sizeof(families) / sizeof(families[0]));
	struct worker_stats st;
	struct loop_stats ls;
	struct stats_backend b = { .addr = v4("127.0.0.1", 8081), .active = 1, .up = 1 };
	struct stats_listener l = listener_at("web", 1, 1);
	struct stats_pool p = pool_named("web", false);
	char *text;

	snaps = calloc(1, sizeof(*snaps));
	cr_assert_not_null(snaps);
	fill_worker(&st, &ls, 1);
	stats_publish(&snaps[0], 1, &st, &ls, &b, 1, &l, 1, &p, 1);
	text = render(1);
	parse_metrics(text, &parsed); /* also checks each sample sits under its own TYPE */
	cr_assert_eq(parsed.nhelp, nf, "%d HELP lines, want %d", parsed.nhelp, nf);
	cr_assert_eq(parsed.ntype, nf, "%d TYPE lines, want %d", parsed.ntype, nf);
	for (int f = 0; f < nf; f++) {
		int found = -1;
		char line[160];

		for (int i = 0; i < parsed.ntype; i++)
			if (strcmp(parsed.type[i], families[f].name) == 0)
				found = i;
		cr_assert_geq(found, 0, "no TYPE line for %s", families[f].name);
		cr_assert_str_eq(parsed.type_kind[found], families[f].kind, "type of %s",
				 families[f].name);
		snprintf(line, sizeof(line), "# HELP %s ", families[f].name);
		cr_assert_not_null(strstr(text, line), "no '%s'", line);
		snprintf(line, sizeof(line), "\n# TYPE %s %s\n", families[f].name,
			 families[f].kind);
		cr_assert_not_null(strstr(text, line), "no '%s'", line + 1);
	}
	/* every sample value is a number */
	for (int i = 0; i < parsed.n; i++) {
		char *end;

		strtod(parsed.m[i].value, &end);
		cr_assert(*end == '\0' && end != parsed.m[i].value, "%s has value '%s'",
			  parsed.m[i].key, parsed.m[i].value);
	}
	free(text);
	free(snaps);
}

Test(ops, stats_render_histogram_cumulative)
{
	struct worker_stats st[2];
	struct loop_stats ls[2];
	uint64_t total = 0, per_bucket[STATS_CONNECT_BUCKETS + 1];
	char *text;
	int nb = 0;
	double last_le = -1;
	uint64_t last = 0;

	snaps = calloc(2, sizeof(*snaps));
	cr_assert_not_null(snaps);
	memset(st, 0, sizeof(st));
	memset(ls, 0, sizeof(ls));
	/* observations through the real bucketing: on, just above and far above each bound */
	for (int b = 0; b < STATS_CONNECT_BUCKETS; b++) {
		stats_connect_observe(&st[0], stats_connect_bounds_us[b]);
		stats_connect_observe(&st[1], stats_connect_bounds_us[b] + 1);
	}
	stats_connect_observe(&st[0], 0);
	stats_connect_observe(&st[1], 60ULL * 1000000);
	for (int b = 0; b <= STATS_CONNECT_BUCKETS; b++) {
		per_bucket[b] = st[0].connect_hist[b] + st[1].connect_hist[b];
		total += per_bucket[b];
	}
	cr_assert_eq(total, 2 * STATS_CONNECT_BUCKETS + 2);
	/* bucket 0 (≤ 100 us) has 0 and 100; +Inf has 2 s + 1 us and 60 s */
	cr_assert_eq(per_bucket[0], 2);
	cr_assert_eq(per_bucket[STATS_CONNECT_BUCKETS], 2);
	stats_publish(&snaps[0], 0, &st[0], &ls[0], NULL, 0, no_listener, 0, NULL, 0);
	stats_publish(&snaps[1], 0, &st[1], &ls[1], NULL, 0, no_listener, 0, NULL, 0);
	text = render(2);
	parse_metrics(text, &parsed);
	for (int i = 0; i < parsed.n; i++) {
		const char *k = parsed.m[i].key;
		const char *pre = "uproxy_upstream_connect_duration_seconds_bucket{le=\"";
		unsigned long long v;
		char *end;

		if (strncmp(k, pre, strlen(pre)) != 0)
			continue;
		v = strtoull(parsed.m[i].value, &end, 10);
		cr_assert_eq(*end, '\0', "bucket value '%s'", parsed.m[i].value);
		cr_assert_geq(v, last, "bucket %s = %llu below the one before (%llu): not cumulative",
			      k, v, (unsigned long long)last);
		if (nb < STATS_CONNECT_BUCKETS) {
			double le = strtod(k + strlen(pre), &end);

			cr_assert_str_eq(end, "\"}", "le label of '%s'", k);
			cr_assert_gt(le, last_le, "le not increasing at '%s'", k);
			cr_assert_float_eq(le, stats_connect_bounds_us[nb] / 1e6, 1e-12, "'%s'", k);
			last_le = le;
		} else {
			cr_assert_str_eq(k + strlen(pre), "+Inf\"}", "last bucket is '%s'", k);
		}
		/* cumulative: the sum of this bucket and every one below */
		uint64_t cum = 0;

		for (int b = 0; b <= nb; b++)
			cum += per_bucket[b];
		cr_assert_eq(v, cum, "bucket %s = %llu, want %llu", k, v, (unsigned long long)cum);
		last = v;
		nb++;
	}
	cr_assert_eq(nb, STATS_CONNECT_BUCKETS + 1, "%d buckets", nb);
	expect_u(&parsed, "uproxy_upstream_connect_duration_seconds_count", total);
	cr_assert_str_eq(val(&parsed, "uproxy_upstream_connect_duration_seconds_bucket{le=\"+Inf\"}"),
			 val(&parsed, "uproxy_upstream_connect_duration_seconds_count"));
	{
		uint64_t sum_us = st[0].connect_sum_us + st[1].connect_sum_us;
		double sum = strtod(val(&parsed, "uproxy_upstream_connect_duration_seconds_sum"),
				    NULL);

		cr_assert_float_eq(sum, sum_us / 1e6, 1e-6);
	}
	free(text);
	free(snaps);
}

Test(ops, stats_render_upstreams_deduplicated)
{
	struct worker_stats st;
	struct loop_stats ls;
	struct stats_backend b0[4], b1[3], b2[1];
	/* pools listed in another order by each worker; "db" only in worker 1 */
	struct stats_pool p0[2] = { pool_named("web", false), pool_named("api", false) };
	struct stats_pool p1[3] = { pool_named("api", true), pool_named("web", false),
				    pool_named("db", false) };
	/* worker 2, the last one summed, sees api healthy: on backups still, as worker 1 says */
	struct stats_pool p2[2] = { pool_named("web", false), pool_named("api", false) };
	struct stats_listener l = listener_at("web", 0, 0);
	char *text;

	snaps = calloc(3, sizeof(*snaps));
	cr_assert_not_null(snaps);
	memset(&st, 0, sizeof(st));
	memset(&ls, 0, sizeof(ls));
	b0[0] = (struct stats_backend){ .addr = v4("127.0.0.1", 8081), .active = 2, .up = 1,
					.pool = 0 };
	b0[1] = (struct stats_backend){ .addr = v4("127.0.0.1", 8082), .active = 1, .up = 1,
					.pool = 0 };
	b0[2] = (struct stats_backend){ .addr = v4("10.0.0.1", 8081), .active = 0, .up = 0,
					.pool = 0 };
	/* the same address in another pool is another series */
	b0[3] = (struct stats_backend){ .addr = v4("127.0.0.1", 8081), .active = 7, .up = 1,
					.backup = 1, .pool = 1 };
	/* worker 1 sees web's 8082 down: down overall */
	b1[0] = (struct stats_backend){ .addr = v4("127.0.0.1", 8082), .active = 3, .up = 0,
					.pool = 1 };
	b1[1] = (struct stats_backend){ .addr = v6("::1", 9000), .active = 4, .up = 1,
					.pool = 0 };
	/* and api's 8081 down, while web's 8081 stays up */
	b1[2] = (struct stats_backend){ .addr = v4("127.0.0.1", 8081), .active = 1, .up = 0,
					.pool = 0 };
	/* worker 2 knows only web's 8081 and has 10 on it */
	b2[0] = (struct stats_backend){ .addr = v4("127.0.0.1", 8081), .active = 10, .up = 1,
					.pool = 0 };
	stats_publish(&snaps[0], 3, &st, &ls, b0, 4, &l, 1, p0, 2);
	stats_publish(&snaps[1], 7, &st, &ls, b1, 3, &l, 1, p1, 3);
	stats_publish(&snaps[2], 10, &st, &ls, b2, 1, &l, 1, p2, 2);
	text = render(3);
	parse_metrics(text, &parsed); /* fails on any duplicated sample */

	cr_assert_eq(count_prefix(&parsed, "uproxy_upstream_up{"), 5);
	cr_assert_eq(count_prefix(&parsed, "uproxy_upstream_active_sessions{"), 5);
	expect(&parsed, "uproxy_upstream_up{pool=\"web\",upstream=\"127.0.0.1:8081\"}", "1");
	expect(&parsed, "uproxy_upstream_up{pool=\"web\",upstream=\"127.0.0.1:8082\"}", "0");
	expect(&parsed, "uproxy_upstream_up{pool=\"web\",upstream=\"10.0.0.1:8081\"}", "0");
	expect(&parsed, "uproxy_upstream_up{pool=\"api\",upstream=\"127.0.0.1:8081\"}", "0");
	expect(&parsed, "uproxy_upstream_up{pool=\"api\",upstream=\"[::1]:9000\"}", "1");
	expect_u(&parsed,
		 "uproxy_upstream_active_sessions{pool=\"web\",upstream=\"127.0.0.1:8081\"}", 12);
	expect_u(&parsed,
		 "uproxy_upstream_active_sessions{pool=\"web\",upstream=\"127.0.0.1:8082\"}", 4);
	expect_u(&parsed,
		 "uproxy_upstream_active_sessions{pool=\"web\",upstream=\"10.0.0.1:8081\"}", 0);
	expect_u(&parsed,
		 "uproxy_upstream_active_sessions{pool=\"api\",upstream=\"127.0.0.1:8081\"}", 8);
	expect_u(&parsed, "uproxy_upstream_active_sessions{pool=\"api\",upstream=\"[::1]:9000\"}",
		 4);
	/* a pool is on its backups if any worker says so; one sample per pool name */
	cr_assert_eq(count_prefix(&parsed, "uproxy_pool_backup_active{"), 3);
	expect(&parsed, "uproxy_pool_backup_active{pool=\"web\"}", "0");
	expect(&parsed, "uproxy_pool_backup_active{pool=\"api\"}", "1");
	expect(&parsed, "uproxy_pool_backup_active{pool=\"db\"}", "0");
	free(text);

	/* with no upstream, pool or listener known anywhere: the families are there, without
	 * samples */
	memset(snaps, 0, 3 * sizeof(*snaps));
	stats_publish(&snaps[0], 0, &st, &ls, NULL, 0, no_listener, 0, NULL, 0);
	text = render(1);
	parse_metrics(text, &parsed);
	cr_assert_eq(count_prefix(&parsed, "uproxy_upstream_up"), 0);
	cr_assert_eq(count_prefix(&parsed, "uproxy_pool_backup_active"), 0);
	cr_assert_eq(count_prefix(&parsed, "uproxy_connections_accepted_total"), 0);
	cr_assert_eq(count_prefix(&parsed, "uproxy_connections_denied_total"), 0);
	cr_assert_not_null(strstr(text, "# TYPE uproxy_upstream_up gauge\n"));
	cr_assert_not_null(strstr(text, "# TYPE uproxy_pool_backup_active gauge\n"));
	cr_assert_not_null(strstr(text, "# TYPE uproxy_connections_accepted_total counter\n"));
	/* the reload counters are process-wide: there even with no worker data */
	expect_u(&parsed, "uproxy_config_reloads_total{result=\"ok\"}", 0);
	expect_u(&parsed, "uproxy_config_reloads_total{result=\"failed\"}", 0);
	free(text);
	free(snaps);
}

Test(ops, stats_render_small_buffer)
{
	struct worker_stats st;
	struct loop_stats ls;
	char small[64];
	size_t need, got;
	char *full;

	snaps = calloc(1, sizeof(*snaps));
	cr_assert_not_null(snaps);
	fill_worker(&st, &ls, 3);
	stats_publish(&snaps[0], 0, &st, &ls, NULL, 0, no_listener, 0, NULL, 0);
	need = stats_render(NULL, 0, snaps, 1);
	full = render(1);
	memset(small, 'Z', sizeof(small));
	got = stats_render(small, sizeof(small), snaps, 1);
	cr_assert_eq(got, need, "a short buffer reports %zu, want the %zu needed", got, need);
	cr_assert_eq(small[sizeof(small) - 1], '\0', "not NUL-terminated");
	cr_assert_eq(memcmp(small, full, sizeof(small) - 1), 0);
	/* exactly need bytes (no room for the NUL) is still too small, and terminated */
	{
		char *b = malloc(need);

		cr_assert_not_null(b);
		got = stats_render(b, need, snaps, 1);
		cr_assert_eq(got, need);
		cr_assert_eq(b[need - 1], '\0');
		free(b);
	}
	free(full);
	free(snaps);
}
