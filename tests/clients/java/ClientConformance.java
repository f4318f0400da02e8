// RabbitMQ Java client (Debian's librabbitmq-client-java, amqp-client 5.x) conformance program.
//
// Reads the broker from the environment (AMQP_HOST, AMQP_PORT, AMQP_USER, AMQP_PASSWORD,
// AMQP_VHOST), runs a list of checks, prints one line per check ("PASS name" / "FAIL name: why")
// and a closing "N passed, N failed" line, and exits non-zero if any check failed.
// Compiled with plain javac at test time (no Maven); see test_java_client.py.

import com.rabbitmq.client.*;

import java.nio.charset.StandardCharsets;
import java.util.*;
import java.util.concurrent.*;

public class ClientConformance {
    interface Check { void run() throws Exception; }

    static ConnectionFactory factory;
    static final String PREFIX = "wct.java." + UUID.randomUUID().toString().substring(0, 8) + ".";
    static int passed = 0, failed = 0;

    static void check(String name, Check c) {
        try {
            c.run();
            passed++;
            System.out.println("PASS " + name);
        } catch (Throwable t) {
            failed++;
            System.out.println("FAIL " + name + ": " + t);
            t.printStackTrace(System.out);
        }
        System.out.flush();
    }

    static void require(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    static <T> void eq(T expected, T actual, String what) {
        if (!Objects.equals(expected, actual))
            throw new AssertionError(what + ": expected <" + expected + "> but was <" + actual + ">");
    }

    static String env(String k, String dflt) {
        String v = System.getenv(k);
        return v == null || v.isEmpty() ? dflt : v;
    }

    static byte[] b(String s) { return s.getBytes(StandardCharsets.UTF_8); }
    static String s(byte[] b) { return new String(b, StandardCharsets.UTF_8); }

    public static void main(String[] args) throws Exception {
        factory = new ConnectionFactory();
        factory.setHost(env("AMQP_HOST", "127.0.0.1"));
        factory.setPort(Integer.parseInt(env("AMQP_PORT", "5672")));
        factory.setUsername(env("AMQP_USER", "guest"));
        factory.setPassword(env("AMQP_PASSWORD", "guest"));
        factory.setVirtualHost(env("AMQP_VHOST", "/"));
        factory.setConnectionTimeout(10000);
        factory.setRequestedHeartbeat(30);
        factory.setAutomaticRecoveryEnabled(false);

        check("connect_with_connection_name", () -> {
            try (Connection conn = factory.newConnection("wct-java-conformance")) {
                require(conn.isOpen(), "open");
                eq("wct-java-conformance", conn.getClientProvidedName(), "client provided name");
                Map<String, Object> sp = conn.getServerProperties();
                require(sp.containsKey("product") && sp.containsKey("version"), "server properties product/version: " + sp);
                @SuppressWarnings("unchecked")
                Map<String, Object> caps = (Map<String, Object>) sp.get("capabilities");
                require(caps != null && Boolean.TRUE.equals(caps.get("publisher_confirms")), "publisher_confirms capability");
                eq(30, conn.getHeartbeat(), "negotiated heartbeat");
                require(conn.getFrameMax() > 0, "frame_max");
                require(conn.getChannelMax() > 0, "channel_max " + conn.getChannelMax());
            }
        });

        check("wrong_password_refused", () -> {
            ConnectionFactory f = factory.clone();
            f.setPassword("definitely-wrong");
            try (Connection c = f.newConnection("wct-java-badpw")) {
                throw new AssertionError("connection with a bad password succeeded");
            } catch (AuthenticationFailureException expected) {
                // RabbitMQ: ACCESS_REFUSED via connection.close (authentication_failure_close)
            }
        });

        check("queue_declare_publish_get", () -> {
            try (Connection conn = factory.newConnection("wct-java-get"); Channel ch = conn.createChannel()) {
                String q = PREFIX + "get";
                AMQP.Queue.DeclareOk ok = ch.queueDeclare(q, false, false, true, null);
                eq(q, ok.getQueue(), "queue name");
                Map<String, Object> headers = new HashMap<>();
                headers.put("h-int", 7);
                headers.put("h-str", "v");
                AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                        .contentType("text/plain").deliveryMode(2).priority(1)
                        .correlationId("c1").replyTo("r1").messageId("m1").headers(headers).build();
                ch.basicPublish("", q, props, b("hello java"));
                // RabbitMQ's passive declare may not yet count a just-published message: poll.
                long until = System.currentTimeMillis() + 5000;
                while (ch.queueDeclarePassive(q).getMessageCount() < 1 && System.currentTimeMillis() < until) Thread.sleep(10);
                eq(1, ch.queueDeclarePassive(q).getMessageCount(), "message count");
                GetResponse r = ch.basicGet(q, false);
                require(r != null, "got a message");
                eq("hello java", s(r.getBody()), "body");
                eq("text/plain", r.getProps().getContentType(), "content type");
                eq(2, r.getProps().getDeliveryMode(), "delivery mode");
                eq("c1", r.getProps().getCorrelationId(), "correlation id");
                eq("v", String.valueOf(r.getProps().getHeaders().get("h-str")), "header");
                eq(7, r.getProps().getHeaders().get("h-int"), "int header");
                eq(0, r.getMessageCount(), "remaining");
                ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
                require(ch.basicGet(q, true) == null, "queue empty");
                ch.queueDelete(q);
            }
        });

        check("server_named_exclusive_queue", () -> {
            try (Connection conn = factory.newConnection("wct-java-excl"); Channel ch = conn.createChannel()) {
                String q = ch.queueDeclare().getQueue();
                require(q.startsWith("amq.gen-"), "server-named queue " + q);
            }
        });

        check("exchange_declarations_and_routing", () -> {
            try (Connection conn = factory.newConnection("wct-java-ex"); Channel ch = conn.createChannel()) {
                String direct = PREFIX + "direct", fanout = PREFIX + "fanout", topic = PREFIX + "topic", headers = PREFIX + "headers";
                ch.exchangeDeclare(direct, BuiltinExchangeType.DIRECT, false, true, null);
                ch.exchangeDeclare(fanout, "fanout", false, true, false, null);
                ch.exchangeDeclare(topic, BuiltinExchangeType.TOPIC, true, false, null);
                ch.exchangeDeclare(headers, BuiltinExchangeType.HEADERS, false, true, null);
                ch.exchangeDeclarePassive(topic);
                String q1 = ch.queueDeclare().getQueue(), q2 = ch.queueDeclare().getQueue();
                ch.queueBind(q1, direct, "k1");
                ch.queueBind(q1, fanout, "");
                ch.queueBind(q2, fanout, "");
                ch.queueBind(q2, topic, "*.orange.#");
                Map<String, Object> match = new HashMap<>();
                match.put("x-match", "all");
                match.put("kind", "audit");
                ch.queueBind(q1, headers, "", match);
                ch.basicPublish(direct, "k1", null, b("d"));
                ch.basicPublish(direct, "other", null, b("lost"));
                ch.basicPublish(fanout, "x", null, b("f"));
                ch.basicPublish(topic, "quick.orange.rabbit", null, b("t"));
                ch.basicPublish(topic, "lazy.brown.fox", null, b("lost"));
                Map<String, Object> h = new HashMap<>();
                h.put("kind", "audit");
                ch.basicPublish(headers, "", new AMQP.BasicProperties.Builder().headers(h).build(), b("h"));
                Thread.sleep(100);
                List<String> got1 = new ArrayList<>(), got2 = new ArrayList<>();
                GetResponse r;
                while ((r = ch.basicGet(q1, true)) != null) got1.add(s(r.getBody()));
                while ((r = ch.basicGet(q2, true)) != null) got2.add(s(r.getBody()));
                Collections.sort(got1);
                Collections.sort(got2);
                eq(Arrays.asList("d", "f", "h"), got1, "q1 messages");
                eq(Arrays.asList("f", "t"), got2, "q2 messages");
                ch.queueUnbind(q2, topic, "*.orange.#");
                ch.exchangeDelete(topic);
                ch.exchangeDelete(direct);
                ch.exchangeDelete(fanout);
                ch.exchangeDelete(headers);
            }
        });

        check("publisher_confirms", () -> {
            try (Connection conn = factory.newConnection("wct-java-confirms"); Channel ch = conn.createChannel()) {
                String q = ch.queueDeclare().getQueue();
                ch.confirmSelect();
                eq(1L, ch.getNextPublishSeqNo(), "first seq no");
                ConcurrentSkipListSet<Long> acked = new ConcurrentSkipListSet<>();
                ch.addConfirmListener(new ConfirmListener() {
                    public void handleAck(long tag, boolean multiple) {
                        if (multiple) for (long i = 1; i <= tag; i++) acked.add(i); else acked.add(tag);
                    }
                    public void handleNack(long tag, boolean multiple) { throw new IllegalStateException("nack " + tag); }
                });
                for (int i = 0; i < 100; i++) ch.basicPublish("", q, MessageProperties.PERSISTENT_TEXT_PLAIN, b("c" + i));
                require(ch.waitForConfirms(10000), "all confirmed");
                ch.waitForConfirmsOrDie(10000);
                eq(101L, ch.getNextPublishSeqNo(), "next seq no");
                long deadline = System.currentTimeMillis() + 5000;
                while (acked.size() < 100 && System.currentTimeMillis() < deadline) Thread.sleep(10);
                eq(100, acked.size(), "acks seen by listener");
                eq(100, ch.queueDeclarePassive(q).getMessageCount(), "queue depth");
            }
        });

        check("mandatory_return", () -> {
            try (Connection conn = factory.newConnection("wct-java-return"); Channel ch = conn.createChannel()) {
                CompletableFuture<Return> ret = new CompletableFuture<>();
                ch.addReturnListener(ret::complete);
                ch.confirmSelect();
                ch.basicPublish("", PREFIX + "nowhere", true, MessageProperties.BASIC, b("bounce"));
                ch.waitForConfirmsOrDie(5000);
                Return r = ret.get(5, TimeUnit.SECONDS);
                eq(312, r.getReplyCode(), "reply code");
                eq("NO_ROUTE", r.getReplyText(), "reply text");
                eq("bounce", s(r.getBody()), "returned body");
            }
        });

        check("consumer_manual_ack_and_redelivery", () -> {
            try (Connection conn = factory.newConnection("wct-java-consume")) {
                Channel ch = conn.createChannel();
                String q = PREFIX + "consume";
                ch.queueDeclare(q, false, false, false, null);
                for (int i = 0; i < 10; i++) ch.basicPublish("", q, null, b("m" + i));
                ch.basicQos(3);
                BlockingQueue<Delivery> deliveries = new LinkedBlockingQueue<>();
                CountDownLatch cancelOk = new CountDownLatch(1);
                String tag = ch.basicConsume(q, false, "wct-java-ctag",
                        (consumerTag, d) -> deliveries.add(d),
                        consumerTag -> cancelOk.countDown());
                eq("wct-java-ctag", tag, "consumer tag");
                List<String> bodies = new ArrayList<>();
                for (int i = 0; i < 8; i++) {
                    Delivery d = deliveries.poll(5, TimeUnit.SECONDS);
                    require(d != null, "delivery " + i);
                    bodies.add(s(d.getBody()));
                    require(!d.getEnvelope().isRedeliver(), "not redelivered");
                    ch.basicAck(d.getEnvelope().getDeliveryTag(), false);
                }
                // take the next 2 without acking; with qos 3 we should see them
                Delivery d8 = deliveries.poll(5, TimeUnit.SECONDS), d9 = deliveries.poll(5, TimeUnit.SECONDS);
                require(d8 != null && d9 != null, "last two deliveries");
                ch.basicNack(d8.getEnvelope().getDeliveryTag(), false, true); // requeue
                Delivery again = deliveries.poll(5, TimeUnit.SECONDS);
                require(again != null, "redelivery after nack");
                eq("m8", s(again.getBody()), "requeued body");
                require(again.getEnvelope().isRedeliver(), "redeliver flag");
                ch.basicReject(again.getEnvelope().getDeliveryTag(), false); // drop
                ch.basicCancel(tag);
                eq(Arrays.asList("m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"), bodies, "order");
                ch.close(); // m9 unacked -> requeued
                Channel ch2 = conn.createChannel();
                GetResponse r = ch2.basicGet(q, true);
                require(r != null && s(r.getBody()).equals("m9") && r.getEnvelope().isRedeliver(), "m9 requeued on close");
                eq(0, ch2.queueDelete(q).getMessageCount(), "empty at delete");
            }
        });

        check("channel_error_404_keeps_connection", () -> {
            try (Connection conn = factory.newConnection("wct-java-404")) {
                Channel ch = conn.createChannel();
                try {
                    ch.queueDeclarePassive(PREFIX + "missing");
                    throw new AssertionError("passive declare of a missing queue succeeded");
                } catch (java.io.IOException e) {
                    ShutdownSignalException sse = (ShutdownSignalException) e.getCause();
                    AMQP.Channel.Close close = (AMQP.Channel.Close) sse.getReason();
                    eq(404, close.getReplyCode(), "reply code");
                    require(!sse.isHardError(), "channel-level error");
                }
                require(conn.isOpen(), "connection still open");
                require(conn.createChannel().isOpen(), "new channel opens");
            }
        });

        check("queue_arguments", () -> {
            try (Connection conn = factory.newConnection("wct-java-args"); Channel ch = conn.createChannel()) {
                Map<String, Object> a = new HashMap<>();
                a.put("x-message-ttl", 60000);
                a.put("x-expires", 120000);
                a.put("x-max-length", 1000);
                String q = PREFIX + "args";
                ch.queueDeclare(q, false, false, false, a);
                ch.queueDeclare(q, false, false, false, a);
                ch.queueDelete(q);
            }
        });

        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}
