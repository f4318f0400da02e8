// RabbitMQ Java client over amqps: server-only TLS with PLAIN, and mutual TLS with SASL
// EXTERNAL. Run by test_tls.py; prints one PASS/FAIL line per check.
//   java TlsClient <port> <ca.pem> <client.p12> <p12 password>
import com.rabbitmq.client.*;

import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import java.io.FileInputStream;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;

public class TlsClient {
    static int failures = 0;

    interface Check { void run() throws Exception; }

    static void check(String name, Check c) {
        try {
            c.run();
            System.out.println("PASS " + name);
        } catch (Throwable t) {
            failures++;
            System.out.println("FAIL " + name + ": " + t);
        }
    }

    static SSLContext context(String caPem, String p12, String password) throws Exception {
        KeyStore trust = KeyStore.getInstance("PKCS12");
        trust.load(null, null);
        try (FileInputStream in = new FileInputStream(caPem)) {
            Certificate ca = CertificateFactory.getInstance("X.509").generateCertificate(in);
            trust.setCertificateEntry("ca", ca);
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        KeyManagerFactory kmf = null;
        if (p12 != null) {
            KeyStore keys = KeyStore.getInstance("PKCS12");
            try (FileInputStream in = new FileInputStream(p12)) {
                keys.load(in, password.toCharArray());
            }
            kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(keys, password.toCharArray());
        }
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf == null ? null : kmf.getKeyManagers(), tmf.getTrustManagers(), null);
        return ctx;
    }

    static void roundTrip(Connection conn) throws Exception {
        Channel ch = conn.createChannel();
        String q = ch.queueDeclare("", false, true, true, null).getQueue();
        byte[] body = new byte[300000];
        for (int i = 0; i < body.length; i++) body[i] = (byte) i;
        ch.basicPublish("", q, null, body);
        long deadline = System.currentTimeMillis() + 5000;
        GetResponse r;
        while ((r = ch.basicGet(q, true)) == null) {
            if (System.currentTimeMillis() > deadline) throw new AssertionError("message never arrived");
            Thread.sleep(20);
        }
        if (!java.util.Arrays.equals(r.getBody(), body)) throw new AssertionError("body differs");
        ch.close();
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        String ca = args[1], p12 = args[2], password = args[3];
        check("server_only_tls_plain_login", () -> {
            ConnectionFactory f = new ConnectionFactory();
            f.setHost("localhost");
            f.setPort(port);
            f.setUsername("guest");
            f.setPassword("guest");
            f.useSslProtocol(context(ca, null, null));
            try (Connection conn = f.newConnection("java-tls")) {
                roundTrip(conn);
            }
        });
        check("mutual_tls_external_login", () -> {
            ConnectionFactory f = new ConnectionFactory();
            f.setHost("localhost");
            f.setPort(port);
            f.setSaslConfig(DefaultSaslConfig.EXTERNAL);
            f.useSslProtocol(context(ca, p12, password));
            try (Connection conn = f.newConnection("java-external")) {
                roundTrip(conn);
            }
        });
        System.exit(failures == 0 ? 0 : 1);
    }
}
