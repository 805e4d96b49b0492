/* steer: the reuseport steering program (classic BPF) and its C twin. The program runs on the
 * SYN's skb with data at the TCP payload, so the IP header is read through the SKF_NET_OFF
 * negative offsets; word loads give the address bytes in network order as a host integer. */
#include "uproxy/steer.h"

#include <errno.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#define STEER_MUL      0x9e3779b1u /* 2^32 / golden ratio: odd, spreads every input bit up */
#define STEER_MAX      65535u
#define IP4_SRC_OFF    12 /* struct iphdr.saddr */
#define IP6_SRC_OFF    8  /* struct ipv6hdr.saddr */
#define STEER_PROG_MAX 32

/* One mixing step of the hash over a 32-bit word, shared by the program and steer_index. */
static uint32_t mix(uint32_t acc, uint32_t word)
{
	return (acc ^ word) * STEER_MUL;
}

/* The final fold: high bits into the low ones the modulo keeps. */
static uint32_t fold(uint32_t a)
{
	return a ^ (a >> 16);
}

unsigned int steer_index(const void *addr, size_t len, unsigned int nworkers)
{
	const uint8_t *p = addr;
	uint32_t acc = 0;

	for (size_t i = 0; i + 4 <= len; i += 4)
		acc = mix(acc, (uint32_t)p[i] << 24 | (uint32_t)p[i + 1] << 16 |
				       (uint32_t)p[i + 2] << 8 | p[i + 3]);
	return nworkers ? fold(acc) % nworkers : 0;
}

/* Appends the instructions that mix the word at SKF_NET_OFF + off into A (A ^= word; A *= MUL),
 * using X to hold the accumulator. */
static unsigned int emit_mix(struct sock_filter *f, unsigned int n, int off, bool first)
{
	if (first) {
		/* acc = 0: A = word * MUL */
		f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + off);
	} else {
		f[n++] = (struct sock_filter)BPF_STMT(BPF_MISC | BPF_TAX, 0);
		f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + off);
		f[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0);
	}
	f[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, STEER_MUL);
	return n;
}

/* Appends fold(A) % nworkers and the return of A. */
static unsigned int emit_tail(struct sock_filter *f, unsigned int n, unsigned int nworkers)
{
	f[n++] = (struct sock_filter)BPF_STMT(BPF_MISC | BPF_TAX, 0);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, nworkers);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_A, 0);
	return n;
}

int steer_attach(int fd, unsigned int nworkers, int family, char *why, size_t whylen)
{
	struct sock_filter f[STEER_PROG_MAX];
	struct sock_fprog prog;
	unsigned int n = 0, v4_len, jump_at;

	if (family != AF_INET && family != AF_INET6) {
		snprintf(why, whylen, "client steering needs an IPv4 or IPv6 listener");
		return -EINVAL;
	}
	if (nworkers < 2 || nworkers > STEER_MAX) {
		snprintf(why, whylen, "client steering needs 2..%u workers, not %u", STEER_MAX,
			 nworkers);
		return -EINVAL;
	}
	/* A = ip version (high nibble of the first header byte): 4 → the IPv4 block right
	 * after the jump, else the IPv6 block after it. */
	f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_B | BPF_ABS, SKF_NET_OFF);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 4);
	jump_at = n++;
	n = emit_mix(f, n, IP4_SRC_OFF, 1);
	n = emit_tail(f, n, nworkers);
	v4_len = n - jump_at - 1;
	f[jump_at] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, v4_len);
	for (int i = 0; i < 4; i++)
		n = emit_mix(f, n, IP6_SRC_OFF + 4 * i, i == 0);
	n = emit_tail(f, n, nworkers);
	prog.len = (unsigned short)n;
	prog.filter = f;
	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog)) < 0) {
		int err = errno;

		snprintf(why, whylen, "cannot attach the client steering program: %s",
			 strerror(err));
		return -err;
	}
	return 0;
}

int steer_detach(int fd)
{
	int dummy = 0;

	/* SO_DETACH_REUSEPORT_BPF (5.3): ENOENT when nothing is attached, which is fine. */
	if (setsockopt(fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &dummy, sizeof(dummy)) < 0 &&
	    errno != ENOENT)
		return -errno;
	return 0;
}
