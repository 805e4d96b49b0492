/* Unit tests for the access lists: parsing every accepted form and every rejected one (with the
 * reason it gives), first-match-wins order, no match = allowed, bit-exact prefixes, IPv4-mapped
 * clients and entries matched as IPv4, and the AF_UNIX / unknown-family rules. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "uproxy/acl.h"

/* Parses s, asserting success. */
static struct config_cidr ok(const char *s, bool allow)
{
	struct config_cidr c;
	const char *why = NULL;
	int r = acl_parse(s, allow, &c, &why);

	cr_assert_eq(r, 0, "acl_parse(\"%s\") = %d (%s), want 0", s, r, why ? why : "");
	cr_assert_eq(c.allow, allow, "\"%s\": allow flag", s);
	return c;
}

/* Parses s, asserting -EINVAL with a reason that contains needle. */
static void bad(const char *s, const char *needle)
{
	struct config_cidr c;
	const char *why = NULL;
	int r = acl_parse(s, false, &c, &why);

	cr_assert_eq(r, -EINVAL, "acl_parse(\"%s\") = %d, want -EINVAL", s, r);
	cr_assert_not_null(why, "\"%s\": no reason given", s);
	cr_assert(strstr(why, needle) != NULL, "\"%s\": reason \"%s\" lacks \"%s\"", s, why,
		  needle);
}

/* An IPv4 client address. */
static struct sockaddr_in v4(const char *a)
{
	struct sockaddr_in s = { .sin_family = AF_INET, .sin_port = htons(40000) };

	cr_assert_eq(inet_pton(AF_INET, a, &s.sin_addr), 1, "bad test address %s", a);
	return s;
}

/* An IPv6 client address. */
static struct sockaddr_in6 v6(const char *a)
{
	struct sockaddr_in6 s = { .sin6_family = AF_INET6, .sin6_port = htons(40000) };

	cr_assert_eq(inet_pton(AF_INET6, a, &s.sin6_addr), 1, "bad test address %s", a);
	return s;
}

/* Builds an ACL from "allow X" / "deny X" words. */
static uint32_t build(struct config_cidr *acl, const char *const *lines)
{
	uint32_t n = 0;

	for (; lines[n]; n++) {
		bool allow = strncmp(lines[n], "allow ", 6) == 0;

		cr_assert(allow || strncmp(lines[n], "deny ", 5) == 0, "bad line %s", lines[n]);
		acl[n] = ok(lines[n] + (allow ? 6 : 5), allow);
	}
	return n;
}

static bool allows4(const struct config_cidr *acl, uint32_t n, const char *a)
{
	struct sockaddr_in s = v4(a);

	return acl_allows(acl, n, (const struct sockaddr *)&s);
}

static bool allows6(const struct config_cidr *acl, uint32_t n, const char *a)
{
	struct sockaddr_in6 s = v6(a);

	return acl_allows(acl, n, (const struct sockaddr *)&s);
}

Test(acl_parse, all)
{
	struct config_cidr c = ok("all", false);

	cr_assert_eq(c.family, AF_UNSPEC);
	cr_assert_eq(c.prefix, 0);
}

Test(acl_parse, ipv4_forms)
{
	static const uint8_t ten[4] = { 10, 0, 0, 0 }, host[4] = { 192, 168, 1, 7 };
	struct config_cidr c;

	c = ok("10.0.0.0/8", true);
	cr_assert_eq(c.family, AF_INET);
	cr_assert_eq(c.prefix, 8);
	cr_assert_arr_eq(c.addr, ten, 4);
	c = ok("192.168.1.7", false);
	cr_assert_eq(c.family, AF_INET);
	cr_assert_eq(c.prefix, 32, "a bare IPv4 address is /32");
	cr_assert_arr_eq(c.addr, host, 4);
	c = ok("0.0.0.0/0", true);
	cr_assert_eq(c.prefix, 0);
	c = ok("192.168.1.7/32", true);
	cr_assert_eq(c.prefix, 32);
	c = ok("172.16.0.0/12", true);
	cr_assert_eq(c.prefix, 12);
}

Test(acl_parse, ipv6_forms)
{
	struct config_cidr c;
	struct in6_addr want;

	c = ok("::1", false);
	cr_assert_eq(c.family, AF_INET6);
	cr_assert_eq(c.prefix, 128, "a bare IPv6 address is /128");
	inet_pton(AF_INET6, "::1", &want);
	cr_assert_arr_eq(c.addr, want.s6_addr, 16);
	c = ok("2001:db8::/32", true);
	cr_assert_eq(c.family, AF_INET6);
	cr_assert_eq(c.prefix, 32);
	inet_pton(AF_INET6, "2001:db8::", &want);
	cr_assert_arr_eq(c.addr, want.s6_addr, 16);
	c = ok("::/0", true);
	cr_assert_eq(c.family, AF_INET6);
	cr_assert_eq(c.prefix, 0);
	c = ok("fe80::/10", true);
	cr_assert_eq(c.prefix, 10);
	c = ok("::fffe:0:0/95", true);
	cr_assert_eq(c.family, AF_INET6, "below /96 a network stays IPv6");
}

Test(acl_parse, v4mapped_entries_become_ipv4)
{
	static const uint8_t ten[4] = { 10, 0, 0, 0 }, host[4] = { 1, 2, 3, 4 };
	struct config_cidr c;

	c = ok("::ffff:10.0.0.0/104", true);
	cr_assert_eq(c.family, AF_INET);
	cr_assert_eq(c.prefix, 8);
	cr_assert_arr_eq(c.addr, ten, 4);
	c = ok("::ffff:1.2.3.4", true);
	cr_assert_eq(c.family, AF_INET);
	cr_assert_eq(c.prefix, 32);
	cr_assert_arr_eq(c.addr, host, 4);
	c = ok("::ffff:0:0/96", true);
	cr_assert_eq(c.family, AF_INET);
	cr_assert_eq(c.prefix, 0);
}

Test(acl_parse, host_bits_rejected_with_the_fix)
{
	bad("10.0.0.1/8", "write 10.0.0.0/8");
	bad("10.0.0.1/8", "host bits");
	bad("192.168.1.129/25", "write 192.168.1.128/25");
	bad("1.2.3.4/0", "write 0.0.0.0/0");
	bad("2001:db8::1/32", "write 2001:db8::/32");
	bad("::1/127", "write ::/127");
	bad("fe80::4000/113", "write fe80::/113");
	bad("fe80::8000/112", "write fe80::/112");
}

Test(acl_parse, errors)
{
	bad("", "expected");
	bad("10.0.0.0/33", "0..32");
	bad("::/129", "0..128");
	bad("10.0.0.0/", "0..32");
	bad("10.0.0.0/8x", "0..32");
	bad("10.0.0.0/-1", "0..32");
	bad("10.0.0.0/+8", "0..32");
	bad("10.0.0.0/08", "0..32");
	bad("10.0.0.0/8/8", "0..32");
	bad("10.0.0.0/ 8", "0..32");
	bad("10.0.0.0/99999999999", "0..32");
	bad("10.0.0", "IPv4 or IPv6");
	bad("256.0.0.0", "IPv4 or IPv6");
	bad("10.0.0.0 ", "IPv4 or IPv6");
	bad(" 10.0.0.0", "IPv4 or IPv6");
	bad("example.com", "IPv4 or IPv6");
	bad("ALL", "IPv4 or IPv6");
	bad("all/8", "IPv4 or IPv6");
	bad("[::1]", "brackets");
	bad("[::1]/128", "brackets");
	bad("fe80::1%eth0", "zone");
	bad("1:2:3:4:5:6:7:8:9", "IPv4 or IPv6");
	bad("0123456789012345678901234567890123456789012345678901234567890123456789", "too long");
}

Test(acl_match, deny_one_then_allow_all)
{
	static const char *const lines[] = { "deny 127.0.0.2/32", "allow all", NULL };
	struct config_cidr acl[4];
	uint32_t n = build(acl, lines);

	cr_assert_not(allows4(acl, n, "127.0.0.2"));
	cr_assert(allows4(acl, n, "127.0.0.3"));
	cr_assert(allows4(acl, n, "127.0.0.1"));
	cr_assert(allows6(acl, n, "::1"));
}

Test(acl_match, allow_net_then_deny_all)
{
	static const char *const lines[] = { "allow 127.0.0.0/24", "deny all", NULL };
	struct config_cidr acl[4];
	uint32_t n = build(acl, lines);

	cr_assert(allows4(acl, n, "127.0.0.1"));
	cr_assert(allows4(acl, n, "127.0.0.255"));
	cr_assert_not(allows4(acl, n, "127.0.1.1"));
	cr_assert_not(allows4(acl, n, "126.255.255.255"));
	cr_assert_not(allows6(acl, n, "::1"), "deny all covers IPv6 too");
}

Test(acl_match, first_match_wins)
{
	static const char *const narrow_first[] = { "allow 10.1.0.0/16", "deny 10.0.0.0/8",
						    NULL };
	static const char *const wide_first[] = { "deny 10.0.0.0/8", "allow 10.1.0.0/16", NULL };
	struct config_cidr acl[4];
	uint32_t n;

	n = build(acl, narrow_first);
	cr_assert(allows4(acl, n, "10.1.2.3"));
	cr_assert_not(allows4(acl, n, "10.2.0.1"));
	cr_assert(allows4(acl, n, "11.0.0.1"), "no match: allowed");
	n = build(acl, wide_first);
	cr_assert_not(allows4(acl, n, "10.1.2.3"), "the earlier, wider deny decides");
	cr_assert_not(allows4(acl, n, "10.2.0.1"));
}

Test(acl_match, no_match_or_empty_allows)
{
	static const char *const lines[] = { "deny 192.0.2.0/24", "deny 2001:db8::/32", NULL };
	struct config_cidr acl[4];
	uint32_t n = build(acl, lines);

	cr_assert(acl_allows(acl, 0, NULL), "an empty list allows");
	cr_assert(allows4(acl, 0, "192.0.2.1"), "an empty list allows");
	cr_assert(allows4(acl, n, "198.51.100.1"));
	cr_assert_not(allows4(acl, n, "192.0.2.200"));
	cr_assert(allows6(acl, n, "2001:db9::1"));
	cr_assert_not(allows6(acl, n, "2001:db8:ffff::1"));
}

Test(acl_match, prefix_bits_exact)
{
	static const char *const v4lines[] = { "deny 10.0.0.0/9", NULL };
	static const char *const v6lines[] = { "deny 2001:db8:8000::/33", NULL };
	struct config_cidr acl[2];
	uint32_t n;

	n = build(acl, v4lines);
	cr_assert_not(allows4(acl, n, "10.0.0.0"));
	cr_assert_not(allows4(acl, n, "10.127.255.255"));
	cr_assert(allows4(acl, n, "10.128.0.0"));
	cr_assert(allows4(acl, n, "11.0.0.0"));
	n = build(acl, v6lines);
	cr_assert_not(allows6(acl, n, "2001:db8:8000::1"));
	cr_assert_not(allows6(acl, n, "2001:db8:ffff:ffff::"));
	cr_assert(allows6(acl, n, "2001:db8:7fff:ffff::"));
	cr_assert(allows6(acl, n, "2001:db9:8000::"));
}

Test(acl_match, zero_prefix_is_one_family)
{
	static const char *const v4all[] = { "deny 0.0.0.0/0", NULL };
	static const char *const v6all[] = { "deny ::/0", NULL };
	struct config_cidr acl[2];
	uint32_t n;

	n = build(acl, v4all);
	cr_assert_not(allows4(acl, n, "203.0.113.9"));
	cr_assert(allows6(acl, n, "2001:db8::1"), "0.0.0.0/0 is IPv4 only");
	n = build(acl, v6all);
	cr_assert_not(allows6(acl, n, "2001:db8::1"));
	cr_assert(allows4(acl, n, "203.0.113.9"), "::/0 is IPv6 only");
	cr_assert(allows6(acl, n, "::ffff:203.0.113.9"),
		  "a v4-mapped client is IPv4: ::/0 does not match it (as nginx)");
}

Test(acl_match, v4mapped_client_is_ipv4)
{
	static const char *const lines[] = { "deny 127.0.0.2", "allow all", NULL };
	static const char *const mapped_rule[] = { "deny ::ffff:127.0.0.0/120", NULL };
	struct config_cidr acl[4];
	uint32_t n = build(acl, lines);

	cr_assert_not(allows6(acl, n, "::ffff:127.0.0.2"), "dual-stack view of 127.0.0.2");
	cr_assert(allows6(acl, n, "::ffff:127.0.0.3"));
	cr_assert(allows6(acl, n, "::127.0.0.2"), "an IPv4-compatible address is IPv6");
	n = build(acl, mapped_rule);
	cr_assert_not(allows4(acl, n, "127.0.0.77"), "a ::ffff: rule matches the IPv4 client");
	cr_assert_not(allows6(acl, n, "::ffff:127.0.0.77"));
	cr_assert(allows4(acl, n, "127.0.1.77"));
}

Test(acl_match, ipv6_loopback)
{
	static const char *const lines[] = { "deny ::1", "allow all", NULL };
	struct config_cidr acl[4];
	uint32_t n = build(acl, lines);

	cr_assert_not(allows6(acl, n, "::1"));
	cr_assert(allows6(acl, n, "::2"));
	cr_assert(allows4(acl, n, "0.0.0.1"), "an IPv6 rule never matches an IPv4 client");
	cr_assert(allows4(acl, n, "127.0.0.1"));
}

Test(acl_match, unix_always_allowed_unknown_matches_all_only)
{
	static const char *const deny_all[] = { "deny all", NULL };
	static const char *const deny_nets[] = { "deny 0.0.0.0/0", "deny ::/0", NULL };
	struct sockaddr_un un = { .sun_family = AF_UNIX, .sun_path = "/run/x.sock" };
	struct sockaddr unspec = { .sa_family = AF_UNSPEC };
	struct config_cidr acl[4];
	uint32_t n;

	n = build(acl, deny_all);
	cr_assert(acl_allows(acl, n, (const struct sockaddr *)&un), "AF_UNIX is always allowed");
	cr_assert_not(acl_allows(acl, n, &unspec), "an unknown family matches \"all\"");
	cr_assert_not(acl_allows(acl, n, NULL), "no address matches \"all\"");
	n = build(acl, deny_nets);
	cr_assert(acl_allows(acl, n, &unspec), "an unknown family matches no network");
	cr_assert(acl_allows(acl, n, NULL));
}

Test(acl_format, round_trip)
{
	static const char *const in[] = { "10.0.0.0/8", "::1", "all", "::ffff:10.0.0.0/104",
					  "2001:db8::/32" };
	static const char *const want[] = { "allow 10.0.0.0/8", "deny ::1/128", "allow all",
					    "deny 10.0.0.0/8", "allow 2001:db8::/32" };
	char buf[96];

	for (int i = 0; i < 5; i++) {
		struct config_cidr c = ok(in[i], i % 2 == 0);

		cr_assert_str_eq(acl_format(&c, buf, sizeof(buf)), want[i]);
	}
}
