/* proxyproto: the PROXY protocol, v1 (text) and v2 (binary), as in HAProxy's proxy-protocol.txt:
 * an incremental, strict parser for the header a trusted load balancer puts in front of a client's
 * bytes, and builders for the header we put in front of ours. Pure functions over byte buffers:
 * never reads or writes a socket, never allocates, never guesses whether a header is present. */
#ifndef UPROXY_PROXYPROTO_H
#define UPROXY_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>

#include "uproxy/addr.h"

/* The longest v1 line, CRLF included (spec 2.1: "PROXY UNKNOWN <v6> <v6> 65535 65535\r\n"). A
 * line without its CRLF within this many bytes is rejected. */
#define PROXYPROTO_V1_MAX_LEN 107

/* The fixed part of a v2 header: 12-byte signature, version/command, family/transport and the
 * 16-bit length of the address block (addresses, then TLVs) that follows. */
#define PROXYPROTO_V2_HDR_LEN 16

/*
 * The largest v2 address block we accept. The wire allows 65535 bytes; the spec designs headers
 * to fit one 536-byte TCP segment. 1024 is twice that: the biggest address block (AF_UNIX, 216)
 * or an IPv6 one (36) plus every TLV a real sender emits (HAProxy's authority <= 255, unique id
 * <= 128, its SSL block; the 20-60 byte ids of AWS, GCP and Azure load balancers), while a
 * session stages at most ~1 KiB before it knows where its client came from. Anything longer is
 * -E2BIG: we would only skip those TLVs, and a peer should not make us buffer 64 KiB to do it.
 */
#define PROXYPROTO_V2_MAX_BLOCK 1024
#define PROXYPROTO_V2_MAX_LEN	(PROXYPROTO_V2_HDR_LEN + PROXYPROTO_V2_MAX_BLOCK)

/* The most bytes proxyproto_parse can need before it decides: size a staging buffer with it. */
#define PROXYPROTO_MAX_LEN PROXYPROTO_V2_MAX_LEN

/* Output buffer sizes that always suffice: the longest v1 line we build is 104 bytes ("TCP6",
 * two full IPv6 addresses, two 5-digit ports) plus a NUL; a v2 header is 16 + 36 bytes. */
#define PROXYPROTO_V1_BUILD_MAX (PROXYPROTO_V1_MAX_LEN + 1)
#define PROXYPROTO_V2_BUILD_MAX (PROXYPROTO_V2_HDR_LEN + 36)

enum proxyproto_command {
	PROXYPROTO_CMD_PROXY,	/* relayed: src and dst are the client's original endpoints */
	PROXYPROTO_CMD_LOCAL,	/* v2 LOCAL: the sender's own connection (a health check) */
	PROXYPROTO_CMD_UNKNOWN, /* v1 UNKNOWN, v2 PROXY over AF_UNSPEC or AF_UNIX stream (the
				 * paths are not kept): use the real endpoints, as with LOCAL */
};

/*
 * A parsed header. With PROXYPROTO_CMD_PROXY, family is AF_INET or AF_INET6 and src/dst hold the
 * client's address and the address it connected to (ports included); it always means TCP: v2
 * datagram transports are rejected. With LOCAL or UNKNOWN, family is AF_UNSPEC, src/dst are
 * zeroed, and the caller uses the connection's real endpoints (what the spec asks of a receiver).
 */
struct proxyproto_result {
	uint32_t len;	 /* header bytes, equal to proxyproto_parse's return */
	uint8_t version; /* 1 or 2 */
	enum proxyproto_command command;
	int family; /* AF_INET, AF_INET6, or AF_UNSPEC */
	struct addr src, dst;
	uint16_t tlv_off, tlv_len; /* v2 PROXY, not UNSPEC: the TLVs (checked to fit) */
	const char *why;	   /* after a negative return: a static explanation */
};

/*
 * Parses the start of a connection's byte stream, buf[0..len), which the caller accumulates
 * across reads and passes again, whole, after each one. Returns:
 *   > 0               the header is complete and this many bytes long: buf[ret..len) is client
 *                     data, to be forwarded as is; *out is filled in
 *   0                 every byte so far is a valid beginning of a v1 or v2 header: read more
 *                     (never with len >= PROXYPROTO_MAX_LEN)
 *   -EINVAL           not a valid PROXY header (wrong signature, bad field, length mismatch, a
 *                     malformed TLV or a failed CRC32c TLV, no CRLF in 107 bytes, ...)
 *   -EPROTONOSUPPORT  a valid v2 header for a datagram transport (UDP, unix datagram)
 *   -E2BIG            a v2 header longer than PROXYPROTO_V2_MAX_LEN
 * A negative return sets out->why, and is given as soon as the bytes seen so far cannot start a
 * valid header: any longer buffer with the same prefix gives the same return.
 */
int proxyproto_parse(const uint8_t *buf, size_t len, struct proxyproto_result *out);

/*
 * Builds a v1 line for a TCP connection from src to dst into out and NUL-terminates it; returns
 * its length (without the NUL), or -ENOSPC when outlen is too small (PROXYPROTO_V1_BUILD_MAX
 * always suffices). Both IPv4: "TCP4". Otherwise "TCP6", an IPv4 side written as its v4-mapped
 * IPv6 address (::ffff:a.b.c.d in hex groups: the spec's form, which every v6 parser reads),
 * because one line carries one family. A NULL or non-IP side (a client of a unix: listener)
 * gives "PROXY UNKNOWN\r\n", v1's only form for a connection that is not TCP over IP.
 */
int proxyproto_build_v1(const struct addr *src, const struct addr *dst, char *out, size_t outlen);

/*
 * Builds a v2 header (no TLVs) into out; returns its length, or -ENOSPC when outlen is too small
 * (PROXYPROTO_V2_BUILD_MAX always suffices). Both IPv4: TCP over AF_INET. Otherwise TCP over
 * AF_INET6, an IPv4 side v4-mapped. A NULL src or dst (the proxy's own connection, e.g. a health
 * check), or a side that is not IP (a client of a unix: listener), gives the 16-byte LOCAL
 * header over AF_UNSPEC, no address block: "\r\n\r\n\0\r\nQUIT\n" 0x20 0x00 0x00 0x00. Why
 * LOCAL and not PROXY over AF_UNSPEC: the spec (2.2) obliges a receiver to accept LOCAL and use
 * the connection's real endpoints, but leaves it "free to reject" PROXY over UNSPEC (and some
 * do); it is also what HAProxy sends for a family it cannot carry. Not AF_UNIX (0x31) with the
 * paths either: an unnamed client has none, and the upstream cannot use our socket's paths.
 * Only the client's side is described: the upstream's family (TCP or unix) does not matter.
 */
int proxyproto_build_v2(const struct addr *src, const struct addr *dst, uint8_t *out,
			size_t outlen);

#endif
