// Client sessions with the RabbitMQ Java client (Debian's librabbitmq-client-java), one
// connection each, recorded through tools/record.py to seed the fuzz corpora.
//
//   javac -cp /usr/share/java/amqp-client.jar JavaSessions.java
//   java -cp /usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:. JavaSessions PORT
import com.rabbitmq.client.*;

import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

public class JavaSessions {
    static ConnectionFactory factory(int port) {
        ConnectionFactory f = new ConnectionFactory();
        f.setHost("127.0.0.1");
        f.setPort(port);
        f.setUsername("guest");
        f.setPassword("guest");
        f.setAutomaticRecoveryEnabled(false);
        return f;
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);

        // Confirms, consumers with priorities and cancel notification, recover, qos.
        try (Connection c = factory(port).newConnection("fuzz-seed-java")) {
            Channel ch = c.createChannel();
            ch.basicQos(10, true);
            ch.confirmSelect();
            Map<String, Object> qargs = new HashMap<>();
            qargs.put("x-single-active-consumer", true);
            qargs.put("x-expires", 600000);
            String q = ch.queueDeclare("seed.java.q", false, false, true, qargs).getQueue();
            Map<String, Object> headers = new HashMap<>();
            headers.put("str", "value");
            headers.put("int", 42);
            headers.put("long", 1L << 40);
            headers.put("bool", false);
            headers.put("list", java.util.Arrays.asList(1, "two", 3.0));
            AMQP.BasicProperties p = new AMQP.BasicProperties.Builder()
                    .contentType("application/json").deliveryMode(2).headers(headers)
                    .messageId("java-1").timestamp(new java.util.Date(1700000000000L)).build();
            for (int i = 0; i < 3; i++) {
                ch.basicPublish("", q, p, ("{\"n\":" + i + "}").getBytes("UTF-8"));
            }
            ch.waitForConfirmsOrDie(5000);
            CountDownLatch got = new CountDownLatch(3);
            Map<String, Object> cargs = new HashMap<>();
            cargs.put("x-priority", 5);
            String tag = ch.basicConsume(q, false, "java-consumer", false, false, cargs,
                    new DefaultConsumer(ch) {
                        @Override
                        public void handleDelivery(String t, Envelope e, AMQP.BasicProperties pr,
                                                   byte[] body) throws java.io.IOException {
                            if (e.isRedeliver() || e.getDeliveryTag() != 2) {
                                getChannel().basicAck(e.getDeliveryTag(), false);
                            }
                            got.countDown();
                        }
                    });
            got.await(5, TimeUnit.SECONDS);
            ch.basicRecover(true);
            Thread.sleep(200);
            ch.basicCancel(tag);
            ch.queueDelete(q);
            ch.close();
        }

        // Exchanges of every type, internal exchanges, exchange-to-exchange bindings,
        // server-named exclusive queues, a blocked publish to a missing exchange.
        try (Connection c = factory(port).newConnection("fuzz-seed-java-2")) {
            Channel ch = c.createChannel();
            ch.exchangeDeclare("seed.java.in", BuiltinExchangeType.TOPIC, false, false, null);
            ch.exchangeDeclare("seed.java.internal", BuiltinExchangeType.DIRECT, false, false,
                    true, null);
            ch.exchangeBind("seed.java.internal", "seed.java.in", "#");
            String q = ch.queueDeclare().getQueue();
            ch.queueBind(q, "seed.java.internal", "x.y");
            ch.basicPublish("seed.java.in", "x.y", null, "routed twice".getBytes("UTF-8"));
            GetResponse r = ch.basicGet(q, true);
            ch.queueUnbind(q, "seed.java.internal", "x.y");
            ch.exchangeUnbind("seed.java.internal", "seed.java.in", "#");
            ch.exchangeDelete("seed.java.internal");
            ch.exchangeDelete("seed.java.in", true);
            Channel ch2 = c.createChannel();
            try {
                ch2.exchangeDeclarePassive("seed.java.missing");
            } catch (java.io.IOException expected) {
            }
            ch.close();
        }
        System.out.println("java sessions done");
    }
}
