// sluice's eBPF fallback: one fixed tc classifier that enforces a node's NodeRuleset from maps.
//
// Attached to every local pod's host-side veth (routed or bridge port alike):
//   tc ingress of the veth = packets the pod sends     = the pod's EGRESS   (pod_egress)
//   tc egress  of the veth = packets sent to the pod   = the pod's INGRESS  (pod_ingress)
// Both directions must allow, as in the nftables dataplane: the source pod's veth judges
// egress, the destination pod's veth judges ingress.
//
// The program never changes; policy changes are map updates (see docs/ebpf.md). Every
// layout below is mirrored by src/ebpf-fallback/layout.rs, which asserts the sizes.
//
// Policy of one pod in one direction is an ordered list of tiers (up to MAX_TIERS), each a
// "context" (ctx id: one rulebook) of clause bits, then a default. A clause matches a packet
// when its bit is set both in the peer bits (who the other side is) and in the port bits
// (protocol / port / named port), so a whole rulebook is two or three map lookups and one AND,
// whatever the number of rules:
//   peer bits = ctx.any_peer | peers4/peers6[ctx, peer address]       (LPM tries)
//   port bits = ctx.any_port | ports[ctx, proto, dport]               (LPM trie over ports)
//                            | named[ctx, daddr, proto, dport]        (hash, per-pod named ports)
// Bits are numbered in clause order, so the first matching clause is the lowest common bit;
// its action (ctx.drop / ctx.pass masks, accept otherwise) decides: accept or drop end the
// evaluation, pass (the IR's Continue) goes on to the next tier. No tier decides: the default.
// Replies: our own LRU flow table, written on every allow (why not the kernel's conntrack:
// docs/ebpf.md).
//
// Services: tc ingress runs before the node's NAT, so a pod's packet to a ClusterIP still
// carries the ClusterIP. The pod's egress rules are about the backend it is DNATed to, so for
// destinations in sluice_nat (the service ranges) the egress check is deferred: the veth's
// ingress writes the pod's ifindex into the upper half of skb->mark, and the first tc egress
// after routing (another pod's veth, or sluice_post_nat on every other interface) judges the
// rewritten packet against that pod's egress tiers. See docs/ebpf.md.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define BITS_WORDS 4
#define MAX_SELF 4
#define MAX_GUARD4 4
#define MAX_GUARD6 8

#define MAX_TIERS 4

// dir_val.state
#define STATE_OPEN 0        // not isolated: everything passes
#define STATE_TIERS 1       // the tiers, then the default
#define STATE_FAIL_CLOSED 2 // everything dropped (any other value too)

// What one tier says about a packet.
#define V_NONE 0   // no clause matched, or a pass (Continue) clause: the next tier decides
#define V_ACCEPT 1
#define V_DROP 2

#define DIR_INGRESS 0
#define DIR_EGRESS 1

// pod_val.flags
#define GUARD_MAC (1u << 0)  // frames from the pod must carry its MAC
#define GUARD_V4 (1u << 1)   // IPv4 sources must be in guard4
#define GUARD_ARP (1u << 2)  // ARP senders must be arp_ip
#define GUARD_V6 (1u << 3)   // IPv6 sources must be in guard6
#define GUARD_DROP (1u << 4) // guard could not be translated: drop everything from the pod

// flow_val.flags
#define F_REPLIED (1u << 0)
#define F_FIN (1u << 1)
#define F_RST (1u << 2)

#define SEC_NS 1000000000ull

// skb->mark bits that carry a deferred egress check from the veth to the post-NAT hook: the
// source pod's ifindex. kube-proxy and flannel use only the lower half (0x4000, 0x8000).
#define MARK_SHIFT 16
#define MARK_MASK 0xffff0000u

// The big steps are BPF-to-BPF calls rather than inlined: each gets its own stack frame, so
// their scratch buffers do not add up past the 512-byte stack.
#define __noinline __attribute__((noinline))

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58 // <linux/in6.h> would pull in more than it gives
#endif

struct bits {
	__u64 w[BITS_WORDS];
};

struct ctx_val {
	struct bits any_peer;
	struct bits any_port;
	struct bits drop; // clause bits whose action is drop
	struct bits pass; // clause bits whose action is pass (Continue); the rest accept
};

struct addr16 {
	__u8 b[16];
};

struct prefix6 {
	__u8 b[16];
	__u32 plen;
};

// One pod in one direction.
struct dir_val {
	__u32 ctx[MAX_TIERS]; // tier contexts in order, ntiers of them
	__u8 state;           // STATE_*
	__u8 ntiers;
	__u8 accept_default;  // what happens when no tier decides
	__u8 pad;
};

struct pod_val {
	struct dir_val dir[2]; // [DIR_INGRESS], [DIR_EGRESS]
	__u32 flags;
	__u8 nself[2];
	__u8 nguard4;
	__u8 nguard6;
	struct addr16 self[2][MAX_SELF]; // peer addresses always allowed: the pod itself
	__u8 mac[6];
	__u8 pad[2];
	__u8 arp_ip[4];
	__u8 guard4[MAX_GUARD4][4];
	__u32 guard4_plen[MAX_GUARD4];
	struct prefix6 guard6[MAX_GUARD6];
};

// LPM keys: everything after prefixlen is compared most significant bit first, so the ctx
// id is big-endian and always fully covered (prefixlen = 32 + address prefix).
struct peer4_key {
	__u32 prefixlen;
	__u32 ctx_be;
	__u8 addr[4];
};

struct peer6_key {
	__u32 prefixlen;
	__u32 ctx_be;
	__u8 addr[16];
};

struct port_key {
	__u32 prefixlen; // 32 (ctx) + 8 (proto) + port prefix
	__u32 ctx_be;
	__u8 proto;
	__u8 port[2]; // big-endian
	__u8 pad;
};

struct named_key {
	__u32 ctx;
	__u8 proto;
	__u8 pad;
	__u16 port; // host order
	__u8 addr[16]; // IPv4 as ::ffff:a.b.c.d
};

struct flow_key {
	__u32 ifindex;
	__u8 dir;
	__u8 proto;
	__u16 pad;
	__u16 sport; // host order; ICMP echo: id in sport (request) or dport (reply)
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct flow_val {
	__u64 seen_ns;
	__u32 flags;
	__u32 pad;
};

// A deferred service connection, by its source (the NAT keeps the pod's address and port):
// the pre-NAT tuple to record as allowed once the rewritten packet is judged.
struct pending_key {
	__u32 ifindex;
	__u8 proto;
	__u8 pad;
	__u16 sport;
};

struct nat_key {
	__u32 prefixlen; // 96 + IPv4 prefix, or the IPv6 prefix
	__u8 addr[16];
};

struct frag_key {
	__u32 ifindex;
	__u8 dir;
	__u8 proto;
	__u16 pad;
	__u32 id;
	__u8 saddr[16];
	__u8 daddr[16];
};

enum stat {
	ST_PASS_REPLY,
	ST_PASS_ESTABLISHED,
	ST_PASS_RELATED,
	ST_PASS_FRAGMENT,
	ST_PASS_OPEN,
	ST_PASS_NODE,
	ST_PASS_SELF,
	ST_PASS_POLICY,
	ST_PASS_NOT_IP,
	ST_PASS_NOT_OURS,
	ST_DROP_POLICY,
	ST_DROP_FAIL_CLOSED,
	ST_DROP_GUARD,
	ST_DROP_MALFORMED,
	ST_DEFER_SERVICE,
	ST_PASS_DEFERRED,
	ST_DROP_DEFERRED,
	ST_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); // ifindex of the host-side veth
	__type(value, struct pod_val);
} sluice_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct ctx_val);
} sluice_ctxs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer4_key);
	__type(value, struct bits);
} sluice_peers4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer6_key);
	__type(value, struct bits);
} sluice_peers6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct port_key);
	__type(value, struct bits);
} sluice_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct named_key);
	__type(value, struct bits);
} sluice_named SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} sluice_flows SEC(".maps");

// Destinations the node's NAT rewrites (Service ranges): the egress check waits for NAT.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct nat_key);
	__type(value, __u32);
} sluice_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct pending_key);
	__type(value, struct flow_key);
} sluice_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag_key);
	__type(value, __u64);
} sluice_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sluice_stats SEC(".maps");

// A parsed packet. Addresses are 16 bytes, IPv4 mapped as ::ffff:a.b.c.d.
struct pkt {
	__u8 v6;
	__u8 proto;
	__u8 has_ports;   // TCP/UDP/SCTP with its ports read
	__u8 frag;        // 0: not a fragment, 1: first fragment, 2: later fragment
	__u8 tcp_flags;
	__u8 icmp_error;  // an ICMP error whose quoted packet is in inner_*
	__u16 sport;
	__u16 dport;
	__u16 pad;
	__u32 frag_id;
	__u32 l4off;
	__u8 saddr[16];
	__u8 daddr[16];
	// ICMP errors: the quoted packet's tuple
	__u8 inner_proto;
	__u8 pad2;
	__u16 inner_sport;
	__u16 inner_dport;
	__u16 pad3;
	__u8 inner_saddr[16];
	__u8 inner_daddr[16];
};

static __always_inline void count(__u32 what)
{
	__u64 *c = bpf_map_lookup_elem(&sluice_stats, &what);
	if (c)
		*c += 1;
}

static __always_inline void map4(__u8 *dst, const void *src4)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, src4, 4);
}

// Byte comparisons as plain loops: the BPF target has no memcmp to call.
static __always_inline int eq_bytes(const __u8 *a, const __u8 *b, int n)
{
	__u8 d = 0;
#pragma unroll
	for (int i = 0; i < 16; i++)
		if (i < n)
			d |= a[i] ^ b[i];
	return d == 0;
}

// Whether an entry seen at `seen` is older than `timeout` (signed: another CPU may have
// stamped it a little after our `now`).
static __always_inline int expired(__u64 now, __u64 seen, __u64 timeout)
{
	return (__s64)(now - seen) > (__s64)timeout;
}

static __always_inline int is_icmp(__u8 proto)
{
	return proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
}

// ICMP echo request/reply: the identifier plays the ports, so the reply reverses the request.
static __always_inline int icmp_echo(__u8 proto, __u8 type, int *reply)
{
	if (proto == IPPROTO_ICMP) {
		*reply = type == 0;
		return type == 8 || type == 0;
	}
	*reply = type == 129;
	return type == 128 || type == 129;
}

static __always_inline int icmp_is_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == 3 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}

// Ports (or the echo identifier) of the L4 header at off. Returns 0 when they were read.
static __always_inline int read_ports(struct __sk_buff *skb, __u32 off, __u8 proto, __u16 *sport,
				      __u16 *dport, __u8 *type_out)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		__be16 p[2];
		if (bpf_skb_load_bytes(skb, off, p, sizeof(p)))
			return -1;
		*sport = bpf_ntohs(p[0]);
		*dport = bpf_ntohs(p[1]);
		return 0;
	}
	if (is_icmp(proto)) {
		__u8 h[8];
		int reply;
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
			return -1;
		*type_out = h[0];
		*sport = 0;
		*dport = 0;
		if (icmp_echo(proto, h[0], &reply)) {
			__u16 id = ((__u16)h[4] << 8) | h[5];
			if (reply)
				*dport = id;
			else
				*sport = id;
		}
		return 0;
	}
	return -1;
}

// The IPv6 extension header chain, bounded. Sets proto and l4off; frag info for fragments.
static __always_inline int skip_ext6(struct __sk_buff *skb, struct pkt *p, __u8 next, __u32 off)
{
#pragma unroll
	for (int i = 0; i < 6; i++) {
		if (next == 0 || next == 43 || next == 60) { // hop-by-hop, routing, destination options
			__u8 h[2];
			if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
				return -1;
			next = h[0];
			off += ((__u32)h[1] + 1) * 8;
		} else if (next == 51) { // authentication header
			__u8 h[2];
			if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
				return -1;
			next = h[0];
			off += ((__u32)h[1] + 2) * 4;
		} else if (next == 44) { // fragment
			__u8 h[8];
			if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
				return -1;
			__u16 offset = (((__u16)h[2] << 8) | h[3]) & 0xfff8;
			int more = h[3] & 1;
			if (offset)
				p->frag = 2;
			else if (more)
				p->frag = 1;
			p->frag_id = ((__u32)h[4] << 24) | ((__u32)h[5] << 16) | ((__u32)h[6] << 8) | h[7];
			next = h[0];
			off += 8;
		} else {
			break;
		}
	}
	p->proto = next;
	p->l4off = off;
	return 0;
}

// The quoted packet of an ICMP error (its addresses and ports), for related traffic.
static __noinline void parse_icmp_inner(struct __sk_buff *skb, struct pkt *p)
{
	__u32 off = p->l4off + 8;
	__u8 type = 0;
	if (!p->v6) {
		__u8 h[20];
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
			return;
		__u32 ihl = (h[0] & 0xf) * 4;
		if (ihl < 20)
			return;
		p->inner_proto = h[9];
		map4(p->inner_saddr, &h[12]);
		map4(p->inner_daddr, &h[16]);
		off += ihl;
	} else {
		__u8 h[40];
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
			return;
		p->inner_proto = h[6];
		__builtin_memcpy(p->inner_saddr, &h[8], 16);
		__builtin_memcpy(p->inner_daddr, &h[24], 16);
		off += 40;
	}
	if (read_ports(skb, off, p->inner_proto, &p->inner_sport, &p->inner_dport, &type) == 0)
		p->icmp_error = 1;
}

// Returns 0 for a parsed IP packet, 1 for something that is not IP, -1 for malformed IP.
static __noinline int parse(struct __sk_buff *skb, struct pkt *p, __u16 *ethertype)
{
	__be16 proto;
	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)))
		return -1;
	*ethertype = bpf_ntohs(proto);
	__u32 off = ETH_HLEN;
	if (proto == bpf_htons(ETH_P_IP)) {
		__u8 h[20];
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
			return -1;
		__u32 ihl = (h[0] & 0xf) * 4;
		if (ihl < 20)
			return -1;
		p->proto = h[9];
		__u16 fo = ((__u16)h[6] << 8) | h[7];
		if (fo & 0x1fff)
			p->frag = 2;
		else if (fo & 0x2000)
			p->frag = 1;
		p->frag_id = ((__u32)h[4] << 8) | h[5];
		map4(p->saddr, &h[12]);
		map4(p->daddr, &h[16]);
		p->l4off = off + ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		__u8 h[40];
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
			return -1;
		p->v6 = 1;
		__builtin_memcpy(p->saddr, &h[8], 16);
		__builtin_memcpy(p->daddr, &h[24], 16);
		if (skip_ext6(skb, p, h[6], off + 40))
			return -1;
	} else {
		return 1;
	}
	if (p->frag == 2)
		return 0; // later fragments carry no L4 header
	__u8 type = 0;
	if (read_ports(skb, p->l4off, p->proto, &p->sport, &p->dport, &type) == 0) {
		if (p->proto == IPPROTO_TCP) {
			__u8 fl;
			if (bpf_skb_load_bytes(skb, p->l4off + 13, &fl, 1) == 0)
				p->tcp_flags = fl;
		}
		if (!is_icmp(p->proto))
			p->has_ports = 1;
		else if (icmp_is_error(p->proto, type))
			parse_icmp_inner(skb, p);
	}
	return 0;
}

static __always_inline __u64 flow_timeout(__u8 proto, __u32 flags)
{
	// The kernel conntrack's defaults, so replies behave as with nftables.
	if (proto == IPPROTO_TCP) {
		if (flags & F_RST)
			return 10 * SEC_NS;
		if (flags & F_FIN)
			return 120 * SEC_NS;
		if (!(flags & F_REPLIED))
			return 120 * SEC_NS;
		return 432000 * SEC_NS;
	}
	if (proto == IPPROTO_UDP)
		return (flags & F_REPLIED ? 120 : 30) * SEC_NS;
	if (is_icmp(proto))
		return 30 * SEC_NS;
	return 600 * SEC_NS;
}

static __always_inline void tcp_track(struct flow_val *v, __u8 tcp_flags)
{
	if (tcp_flags & 0x04) // RST
		v->flags |= F_RST;
	if (tcp_flags & 0x01) // FIN
		v->flags |= F_FIN;
}

// A live flow entry, or NULL (expired entries are removed).
static __always_inline struct flow_val *flow_get(struct flow_key *k, __u64 now)
{
	struct flow_val *v = bpf_map_lookup_elem(&sluice_flows, k);
	if (!v)
		return 0;
	if (expired(now, v->seen_ns, flow_timeout(k->proto, v->flags))) {
		bpf_map_delete_elem(&sluice_flows, k);
		return 0;
	}
	return v;
}

static __always_inline void flow_key_of(struct flow_key *k, __u32 ifindex, __u8 dir, struct pkt *p,
					int reverse)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->ifindex = ifindex;
	k->dir = dir;
	k->proto = p->proto;
	if (!reverse) {
		k->sport = p->sport;
		k->dport = p->dport;
		__builtin_memcpy(k->saddr, p->saddr, 16);
		__builtin_memcpy(k->daddr, p->daddr, 16);
	} else {
		k->sport = p->dport;
		k->dport = p->sport;
		__builtin_memcpy(k->saddr, p->daddr, 16);
		__builtin_memcpy(k->daddr, p->saddr, 16);
	}
}

static __always_inline void flow_record_key(struct flow_key *k, __u8 tcp_flags, __u64 now)
{
	struct flow_val *v = bpf_map_lookup_elem(&sluice_flows, k);
	if (v && !expired(now, v->seen_ns, flow_timeout(k->proto, v->flags)) && !(tcp_flags & 0x02)) {
		v->seen_ns = now;
		tcp_track(v, tcp_flags);
	} else {
		// New (or a SYN starting over on a reused tuple): no reply seen yet.
		struct flow_val nv = { .seen_ns = now };
		tcp_track(&nv, tcp_flags);
		bpf_map_update_elem(&sluice_flows, k, &nv, BPF_ANY);
	}
}

// Records an allowed packet's flow (and a first fragment's datagram) at this check point.
static __noinline void flow_record(__u32 ifindex, __u8 dir, struct pkt *p, __u64 now)
{
	if (p->frag == 2)
		return;
	struct flow_key k;
	flow_key_of(&k, ifindex, dir, p, 0);
	flow_record_key(&k, p->tcp_flags, now);
	if (p->frag == 1) {
		struct frag_key fk = {};
		fk.ifindex = ifindex;
		fk.dir = dir;
		fk.proto = p->proto;
		fk.id = p->frag_id;
		__builtin_memcpy(fk.saddr, p->saddr, 16);
		__builtin_memcpy(fk.daddr, p->daddr, 16);
		bpf_map_update_elem(&sluice_frags, &fk, &now, BPF_ANY);
	}
}

// Established or related traffic at this check point: 1 to pass without asking the policy.
static __noinline int flow_pass(__u32 ifindex, __u8 dir, struct pkt *p, __u64 now)
{
	struct flow_key k;
	struct flow_val *v;
	int syn = (p->tcp_flags & 0x12) == 0x02; // a SYN without ACK starts a new connection

	if (p->frag == 2) {
		struct frag_key fk = {};
		fk.ifindex = ifindex;
		fk.dir = dir;
		fk.proto = p->proto;
		fk.id = p->frag_id;
		__builtin_memcpy(fk.saddr, p->saddr, 16);
		__builtin_memcpy(fk.daddr, p->daddr, 16);
		__u64 *t = bpf_map_lookup_elem(&sluice_frags, &fk);
		if (t && !expired(now, *t, 30 * SEC_NS)) {
			count(ST_PASS_FRAGMENT);
			return 1;
		}
		return 0;
	}
	if (!syn) {
		// A reply of a flow this pod's other direction allowed.
		flow_key_of(&k, ifindex, dir ^ 1, p, 1);
		v = flow_get(&k, now);
		if (v) {
			v->seen_ns = now;
			v->flags |= F_REPLIED;
			tcp_track(v, p->tcp_flags);
			count(ST_PASS_REPLY);
			return 1;
		}
		// More of a flow this direction allowed, once it has seen a reply (ct established).
		flow_key_of(&k, ifindex, dir, p, 0);
		v = flow_get(&k, now);
		if (v && (v->flags & F_REPLIED)) {
			v->seen_ns = now;
			tcp_track(v, p->tcp_flags);
			count(ST_PASS_ESTABLISHED);
			return 1;
		}
	}
	if (p->icmp_error) {
		// ICMP errors about a packet of a flow allowed the other way (ct related).
		__builtin_memset(&k, 0, sizeof(k));
		k.ifindex = ifindex;
		k.dir = dir ^ 1;
		k.proto = p->inner_proto;
		k.sport = p->inner_sport;
		k.dport = p->inner_dport;
		__builtin_memcpy(k.saddr, p->inner_saddr, 16);
		__builtin_memcpy(k.daddr, p->inner_daddr, 16);
		if (flow_get(&k, now)) {
			count(ST_PASS_RELATED);
			return 1;
		}
	}
	return 0;
}

static __always_inline void bits_or(struct bits *a, const struct bits *b)
{
#pragma unroll
	for (int i = 0; i < BITS_WORDS; i++)
		a->w[i] |= b->w[i];
}

// What one tier (context) says about a packet: the action of its first matching clause.
static __noinline int tier_verdict(__u32 ctx, struct pkt *p, __u8 dir)
{
	struct ctx_val *cv = bpf_map_lookup_elem(&sluice_ctxs, &ctx);
	if (!cv)
		return V_DROP; // a context being replaced: deny until the pod points at the new one
	struct bits peer = cv->any_peer;
	struct bits port = cv->any_port;
	const __u8 *who = dir == DIR_INGRESS ? p->saddr : p->daddr;
	struct bits *b;

	if (!p->v6) {
		struct peer4_key k = { .prefixlen = 64, .ctx_be = bpf_htonl(ctx) };
		__builtin_memcpy(k.addr, who + 12, 4);
		b = bpf_map_lookup_elem(&sluice_peers4, &k);
	} else {
		struct peer6_key k = { .prefixlen = 160, .ctx_be = bpf_htonl(ctx) };
		__builtin_memcpy(k.addr, who, 16);
		b = bpf_map_lookup_elem(&sluice_peers6, &k);
	}
	if (b)
		bits_or(&peer, b);

	// Without ports (other protocols, later fragments) only protocol-wide entries match:
	// port 0 is in no NetworkPolicy port range, only in a whole-protocol prefix.
	__u16 dport = p->has_ports ? p->dport : 0;
	struct port_key pk = {
		.prefixlen = 56,
		.ctx_be = bpf_htonl(ctx),
		.proto = p->proto,
		.port = { dport >> 8, dport & 0xff },
	};
	b = bpf_map_lookup_elem(&sluice_ports, &pk);
	if (b)
		bits_or(&port, b);
	if (p->has_ports) {
		struct named_key nk = { .ctx = ctx, .proto = p->proto, .port = dport };
		__builtin_memcpy(nk.addr, p->daddr, 16);
		b = bpf_map_lookup_elem(&sluice_named, &nk);
		if (b)
			bits_or(&port, b);
	}
	// The first clause that matches is the lowest common bit (m & -m isolates it): a fixed
	// BITS_WORDS steps, whatever the number of clauses.
#pragma unroll
	for (int i = 0; i < BITS_WORDS; i++) {
		__u64 m = peer.w[i] & port.w[i];
		if (m) {
			__u64 first = m & -m;
			if (first & cv->drop.w[i])
				return V_DROP;
			if (first & cv->pass.w[i])
				return V_NONE;
			return V_ACCEPT;
		}
	}
	return V_NONE;
}

// A tiered pod direction's verdict on a new packet: 1 to allow. One tier_verdict per tier,
// so the cost grows with the tiers (at most MAX_TIERS), never with the rules.
static __noinline int tiers_allow(struct pod_val *pod, __u8 dir, struct pkt *p)
{
	struct dir_val *d = &pod->dir[dir & 1];
	__u8 n = d->ntiers;
	// A bounded loop (not unrolled: clang cannot unroll around the calls); the verifier walks
	// its MAX_TIERS iterations.
	for (int t = 0; t < MAX_TIERS; t++) {
		if (t >= n)
			break;
		int v = tier_verdict(d->ctx[t], p, dir);
		if (v != V_NONE)
			return v == V_ACCEPT;
	}
	return d->accept_default == 1;
}

static __always_inline int prefix_match(const __u8 *a, const __u8 *pfx, __u32 plen)
{
	__u8 d = 0;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		__u32 left = plen > (__u32)i * 8 ? plen - (__u32)i * 8 : 0;
		__u8 mask = left >= 8 ? 0xff : (__u8)(0xff << (8 - left));
		d |= (a[i] ^ pfx[i]) & mask;
	}
	return d == 0;
}

// Anti-spoofing, both attachments: a pod's interface may only carry its own addresses (and,
// bridged, its own MAC and ARP sender), as the nftables dataplane's guard chains. Returns 1 to
// drop.
static __noinline int guard_drops(struct __sk_buff *skb, struct pod_val *pod, struct pkt *p,
				       __u16 ethertype, int is_ip)
{
	if (pod->flags & GUARD_DROP)
		return 1;
	if (pod->flags & GUARD_MAC) {
		__u8 src[6];
		if (bpf_skb_load_bytes(skb, 6, src, 6))
			return 1;
		if (!eq_bytes(src, pod->mac, 6))
			return 1;
	}
	if (ethertype == ETH_P_ARP && (pod->flags & GUARD_ARP)) {
		// ARP for IPv4 over Ethernet: sender protocol address at 14 + 14.
		__u8 spa[4];
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 14, spa, 4))
			return 1;
		if (!eq_bytes(spa, pod->arp_ip, 4))
			return 1;
	}
	if (!is_ip)
		return 0;
	if (!p->v6 && (pod->flags & GUARD_V4)) {
		int ok = 0;
#pragma unroll
		for (int i = 0; i < MAX_GUARD4; i++) {
			__u8 full[16];
			if (i < pod->nguard4) {
				map4(full, pod->guard4[i]);
				if (prefix_match(p->saddr, full, 96 + pod->guard4_plen[i]))
					ok = 1;
			}
		}
		if (!ok)
			return 1;
	}
	if (p->v6 && (pod->flags & GUARD_V6)) {
		int ok = 0;
#pragma unroll
		for (int i = 0; i < MAX_GUARD6; i++) {
			if (i < pod->nguard6 && prefix_match(p->saddr, pod->guard6[i].b, pod->guard6[i].plen))
				ok = 1;
		}
		if (!ok)
			return 1;
	}
	return 0;
}

static __noinline int is_self(struct pod_val *pod, __u8 dir, const __u8 *who)
{
	int hit = 0;
#pragma unroll
	for (int i = 0; i < MAX_SELF; i++) {
		if (i < pod->nself[dir] && eq_bytes(who, pod->self[dir][i].b, 16))
			hit = 1;
	}
	return hit;
}

// One 4-byte store: the verifier allows only whole-field writes of skb->mark, and clang would
// otherwise narrow a masked update to a 2-byte store of the changed half.
static __always_inline void set_mark(struct __sk_buff *skb, __u32 mark)
{
	*(volatile __u32 *)&skb->mark = mark;
}

// A packet of an egress-isolated pod to a Service address: mark it for the post-NAT check
// and let it on. Only the pod's own source addresses (a spoofed source is judged here, on
// the pre-NAT tuple), only whole TCP/UDP/SCTP packets (NAT rewrites ports), and only pods whose
// ifindex fits the mark. Returns 1 when deferred.
static __noinline int defer_to_nat(struct __sk_buff *skb, struct pod_val *pod, __u32 ifindex,
			       struct pkt *p)
{
	if (!p->has_ports || p->frag || ifindex > (MARK_MASK >> MARK_SHIFT))
		return 0;
	struct nat_key nk = { .prefixlen = 128 };
	__builtin_memcpy(nk.addr, p->daddr, 16);
	if (!bpf_map_lookup_elem(&sluice_nat, &nk))
		return 0;
	if (!is_self(pod, DIR_EGRESS, p->saddr))
		return 0;
	struct pending_key pk = { .ifindex = ifindex, .proto = p->proto, .sport = p->sport };
	struct flow_key orig;
	flow_key_of(&orig, ifindex, DIR_EGRESS, p, 0);
	bpf_map_update_elem(&sluice_pending, &pk, &orig, BPF_ANY);
	set_mark(skb, (skb->mark & ~MARK_MASK) | (ifindex << MARK_SHIFT));
	count(ST_DEFER_SERVICE);
	return 1;
}

static __always_inline int judge(struct __sk_buff *skb, __u8 dir)
{
	__u32 ifindex = skb->ifindex;
	struct pod_val *pod = bpf_map_lookup_elem(&sluice_pods, &ifindex);
	if (!pod) {
		count(ST_PASS_NOT_OURS);
		return TC_ACT_UNSPEC;
	}
	struct pkt p = {};
	__u16 ethertype = 0;
	int r = parse(skb, &p, &ethertype);

	if (dir == DIR_EGRESS && (pod->flags & (GUARD_MAC | GUARD_V4 | GUARD_ARP | GUARD_V6 | GUARD_DROP))) {
		if (guard_drops(skb, pod, &p, ethertype, r == 0)) {
			count(ST_DROP_GUARD);
			return TC_ACT_SHOT;
		}
	}
	if (r == 1) {
		count(ST_PASS_NOT_IP); // ARP and the like: nftables' inet family does not see them
		return TC_ACT_UNSPEC;
	}
	__u8 state = pod->dir[dir & 1].state;
	if (r < 0) {
		if (state == STATE_OPEN)
			return TC_ACT_UNSPEC;
		count(ST_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	__u64 now = bpf_ktime_get_ns();

	// The node itself reaching a local pod (kubelet probes) is always allowed. Only traffic
	// the node originates has no input interface: forwarded traffic, including a pod
	// spoofing the node's address, arrived on some device.
	if (dir == DIR_INGRESS && skb->ingress_ifindex == 0) {
		flow_record(ifindex, dir, &p, now);
		count(ST_PASS_NODE);
		return TC_ACT_UNSPEC;
	}
	if (state == STATE_OPEN) {
		// Not isolated: pass, but remember the flow, so that its replies still pass the
		// other direction (or this one, once a policy isolates the pod), as conntrack would.
		flow_record(ifindex, dir, &p, now);
		count(ST_PASS_OPEN);
		return TC_ACT_UNSPEC;
	}
	if (state != STATE_TIERS) {
		count(ST_DROP_FAIL_CLOSED);
		return TC_ACT_SHOT;
	}
	if (flow_pass(ifindex, dir, &p, now))
		return TC_ACT_UNSPEC;
	if (is_self(pod, dir, dir == DIR_INGRESS ? p.saddr : p.daddr)) {
		flow_record(ifindex, dir, &p, now);
		count(ST_PASS_SELF);
		return TC_ACT_UNSPEC;
	}
	if (dir == DIR_EGRESS && defer_to_nat(skb, pod, ifindex, &p))
		return TC_ACT_UNSPEC;
	// Only an allow is recorded: a dropped packet leaves no flow for later packets to ride.
	if (tiers_allow(pod, dir, &p)) {
		flow_record(ifindex, dir, &p, now);
		count(ST_PASS_POLICY);
		return TC_ACT_UNSPEC;
	}
	count(ST_DROP_POLICY);
	return TC_ACT_SHOT;
}

// The deferred egress check, after NAT: the source pod's egress tiers judge the rewritten
// packet (its real destination). Returns TC_ACT_SHOT or TC_ACT_UNSPEC. Only called for packets
// carrying our mark; the mark is cleared so that no later hook judges them again.
static __noinline int post_nat(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	__u32 src_if = mark >> MARK_SHIFT;
	set_mark(skb, mark & ~MARK_MASK);
	struct pkt p = {};
	__u16 ethertype = 0;
	if (parse(skb, &p, &ethertype) != 0) {
		count(ST_DROP_DEFERRED);
		return TC_ACT_SHOT;
	}
	// The pod went away (or changed) between the two hooks: what it may send is unknown.
	struct pod_val *pod = bpf_map_lookup_elem(&sluice_pods, &src_if);
	if (!pod) {
		count(ST_DROP_DEFERRED);
		return TC_ACT_SHOT;
	}
	// The same tiers as at the veth, on the rewritten packet.
	__u8 state = pod->dir[DIR_EGRESS].state;
	int ok;
	if (state == STATE_OPEN)
		ok = 1;
	else if (state != STATE_TIERS)
		ok = 0;
	else
		ok = is_self(pod, DIR_EGRESS, p.daddr) || tiers_allow(pod, DIR_EGRESS, &p);
	if (!ok) {
		count(ST_DROP_DEFERRED);
		return TC_ACT_SHOT;
	}
	// Allowed: the pre-NAT tuple becomes a flow of the pod's egress, so its replies (un-NATed
	// back to the ClusterIP by the time they reach the pod's veth) and the rest of the
	// connection pass as with conntrack.
	struct pending_key pk = { .ifindex = src_if, .proto = p.proto, .sport = p.sport };
	struct flow_key *orig = bpf_map_lookup_elem(&sluice_pending, &pk);
	if (orig) {
		struct flow_key k = *orig;
		flow_record_key(&k, p.tcp_flags, bpf_ktime_get_ns());
		bpf_map_delete_elem(&sluice_pending, &pk);
	}
	count(ST_PASS_DEFERRED);
	return TC_ACT_UNSPEC;
}

// tc ingress of the host-side veth: what the pod sends.
SEC("classifier")
int sluice_pod_egress(struct __sk_buff *skb)
{
	return judge(skb, DIR_EGRESS);
}

// tc egress of the host-side veth: what is delivered to the pod. A packet another local pod
// sent to a Service first meets that pod's deferred egress check.
SEC("classifier")
int sluice_pod_ingress(struct __sk_buff *skb)
{
	if ((skb->mark & MARK_MASK) && post_nat(skb) == TC_ACT_SHOT)
		return TC_ACT_SHOT;
	return judge(skb, DIR_INGRESS);
}

// tc egress of every other interface of the node (uplink, overlay, bridge): the deferred
// egress check of Service traffic leaving towards a backend elsewhere. Everything else passes
// untouched.
SEC("classifier")
int sluice_post_nat(struct __sk_buff *skb)
{
	if (skb->mark & MARK_MASK)
		return post_nat(skb);
	return TC_ACT_UNSPEC;
}

char _license[] SEC("license") = "Apache-2.0";
