"""The management web console in a real headless browser: Debian's chromium driven
through its chromedriver (/usr/bin/chromedriver, installed by install-deps.sh) with
selenium, against a spawned warren's management port. Pika makes the AMQP side of each
scenario and checks the console's effects over AMQP.

Without chromium the tests fail rather than skip: CI installs it, and a console test
that quietly does not run proves nothing."""
from __future__ import annotations

import os

import pika
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The console refreshes every 5 s; an action refreshes at once. Three periods of slack.
WAIT = 15


@pytest.fixture(scope="module")
def console_url(broker):
    if not broker.management:
        pytest.skip("no management API address for this broker (only spawned warrens announce one)")
    return "http://%s/" % broker.management


@pytest.fixture(scope="module")
def driver():
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail("%s missing: install Debian's chromium and chromium-driver "
                        "(tests/clients/install-deps.sh)" % path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    # An explicit driver path: selenium never runs Selenium Manager or downloads anything.
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield d
    finally:
        d.quit()


def wait(driver, timeout=WAIT):
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))


def text_of(driver, css):
    """The text of the element `css` selects, or None while there is none (tables are
    redrawn on each refresh, so elements are looked up afresh each poll)."""
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else None


def wait_text(driver, css, expected, timeout=WAIT):
    try:
        wait(driver, timeout).until(lambda d: text_of(d, css) == expected)
    except TimeoutException:
        raise AssertionError("%r reads %r, not %r, after %ss (page %s, error shown: %r)" % (
            css, text_of(driver, css), expected, timeout, driver.current_url,
            text_of(driver, "#error"))) from None


def open_console(driver, url):
    """Load the page fresh, logged out (sessionStorage keeps the login per tab)."""
    driver.get(url)
    driver.execute_script("sessionStorage.clear()")
    driver.get(url)
    wait(driver).until(EC.visibility_of_element_located((By.ID, "login-form")))


def login(driver, url, user, password):
    open_console(driver, url)
    driver.find_element(By.ID, "login-username").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()


@pytest.fixture
def console(driver, console_url, broker):
    """A browser logged in to the console as the broker's (guest) user."""
    login(driver, console_url, broker.user, broker.password)
    wait(driver).until(EC.visibility_of_element_located((By.ID, "app")))
    wait_text(driver, "#whoami", broker.user)
    return driver


def goto(driver, hash_):
    driver.execute_script("location.hash = arguments[0]", hash_)
    wait(driver).until(lambda d: d.find_element(By.ID, "content").get_attribute("data-page") is not None)


@pytest.fixture
def pika_conn(broker, uniq):
    name = uniq("conn")
    c = pika.BlockingConnection(pika.ConnectionParameters(
        host=broker.host, port=broker.port, virtual_host=broker.vhost,
        credentials=pika.PlainCredentials(broker.user, broker.password),
        client_properties={"connection_name": name}))
    c.connection_name = name
    yield c
    if c.is_open:
        c.close()


def queue_cell(name, field):
    return 'tr[data-testid="queues-row"][data-vhost="/"][data-name="%s"] td[data-field="%s"]' % (name, field)


def test_a_wrong_password_shows_the_apis_reason_and_no_console(driver, console_url, broker):
    login(driver, console_url, broker.user, broker.password + "-wrong")
    wait(driver).until(EC.visibility_of_element_located((By.ID, "login-error")))
    assert driver.find_element(By.ID, "login-error").text == "Login failed"
    assert not driver.find_element(By.ID, "app").is_displayed()
    assert driver.execute_script("return sessionStorage.length") == 0


def test_login_shows_the_overview_and_logout_returns_to_the_form(console):
    wait(console).until(EC.visibility_of_element_located((By.CSS_SELECTOR, '[data-testid="overview-totals"] .totals')))
    assert console.current_url.endswith("#/overview")
    exchanges = text_of(console, '[data-testid="overview-totals"] [data-field="exchanges"] b')
    assert int(exchanges.replace(",", "")) >= 7  # the default exchange and the amq.* ones
    wait(console).until(EC.presence_of_element_located((By.CSS_SELECTOR, 'canvas[data-testid="chart-rates"]')))
    console.find_element(By.ID, "logout").click()
    wait(console).until(EC.visibility_of_element_located((By.ID, "login-form")))
    assert not console.find_element(By.ID, "app").is_displayed()
    assert console.execute_script("return sessionStorage.length") == 0


def test_a_queue_a_client_fills_appears_and_is_purged_through_the_ui(console, pika_conn, uniq):
    q = uniq("q")
    ch = pika_conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)

    goto(console, "#/queues")
    wait_text(console, queue_cell(q, "messages_ready"), "3")
    assert text_of(console, queue_cell(q, "messages_unacknowledged")) == "0"
    assert text_of(console, queue_cell(q, "messages")) == "3"

    console.find_element(By.CSS_SELECTOR, queue_cell(q, "name") + " a").click()
    wait_text(console, '[data-testid="queue-name"]', q)
    props = '[data-testid="queue-props"] [data-field="messages_ready"]'
    wait_text(console, props, "3")
    console.find_element(By.ID, "queue-purge").click()
    alert = wait(console).until(EC.alert_is_present())
    assert q in alert.text
    alert.accept()
    wait_text(console, "#notice", "Queue purged.")
    wait_text(console, props, "0")
    assert ch.queue_declare(q, passive=True).method.message_count == 0

    goto(console, "#/queues")
    wait_text(console, queue_cell(q, "messages_ready"), "0")
    ch.queue_delete(q)


def test_dismissing_the_purge_dialog_keeps_the_messages(console, pika_conn, uniq):
    q = uniq("q")
    ch = pika_conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"keep me")
    goto(console, "#/queues/%2F/" + q)
    props = '[data-testid="queue-props"] [data-field="messages_ready"]'
    wait_text(console, props, "1")
    console.find_element(By.ID, "queue-purge").click()
    wait(console).until(EC.alert_is_present()).dismiss()
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    ch.queue_delete(q)


def test_get_messages_through_the_ui_shows_the_payload(console, pika_conn, uniq):
    q = uniq("q")
    ch = pika_conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"hello console")
    goto(console, "#/queues/%2F/" + q)
    wait_text(console, '[data-testid="queue-props"] [data-field="messages_ready"]', "1")
    console.find_element(By.CSS_SELECTOR, '#get-ackmode option[value="ack_requeue_false"]').click()
    console.find_element(By.ID, "get-messages-submit").click()
    wait_text(console, '[data-testid="got-message"] [data-field="payload"]', "hello console")
    # Automatic ack: the message is gone.
    wait_text(console, '[data-testid="queue-props"] [data-field="messages_ready"]', "0")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)


def test_publish_through_the_exchange_page_lands_in_a_bound_queue(console, pika_conn, uniq):
    q = uniq("q")
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.queue_bind(q, "amq.direct", routing_key=q)

    goto(console, "#/exchanges/%2F/amq.direct")
    wait_text(console, '[data-testid="exchange-name"]', "amq.direct")
    wait(console).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, '[data-testid="bindings-source-row"][data-name="amq.direct -> %s (%s)"]' % (q, q))))
    console.find_element(By.ID, "publish-routing-key").send_keys(q)
    console.find_element(By.ID, "publish-payload").send_keys("from the console")
    console.find_element(By.ID, "publish-submit").click()
    wait_text(console, "#publish-result", "Message published.")

    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None and body == b"from the console"
    assert method.exchange == "amq.direct" and method.routing_key == q

    # Nothing bound under that key: the page says so, as RabbitMQ's does.
    key = console.find_element(By.ID, "publish-routing-key")
    key.clear()
    key.send_keys(q + ".nowhere")
    console.find_element(By.ID, "publish-submit").click()
    wait_text(console, "#publish-result", "Message published, but not routed.")
    ch.queue_delete(q)


def test_the_connections_page_shows_a_clients_channel_count(console, pika_conn):
    name = pika_conn.connection_name
    channels = [pika_conn.channel() for _ in range(3)]
    row = ('//tr[@data-testid="connections-row"][td[@data-field="user_provided_name" and text()="%s"]]'
           % name)

    def channel_count(d):
        cells = d.find_elements(By.XPATH, row + '/td[@data-field="channels"]')
        return cells[0].text if cells else None

    goto(console, "#/connections")
    wait(console).until(lambda d: channel_count(d) == "3", "connection %s with 3 channels" % name)
    channels[0].close()
    wait(console).until(lambda d: channel_count(d) == "2", "the closed channel leaves the count")

    link = console.find_element(By.XPATH, row + '/td[@data-field="name"]/a')
    full_name = link.text  # RabbitMQ's "peer -> local"
    link.click()
    wait(console).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-testid="connection-channels-row"]')) == 2)
    wait_text(console, '[data-testid="connection-props"] [data-field="user_provided_name"]', name)

    # The channels page lists them too, named "<connection> (<number>)".
    goto(console, "#/channels")
    mine = 'tr[data-testid="channels-row"][data-name^="%s ("]' % full_name
    wait(console).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, mine)) == 2)


def test_closing_a_connection_through_the_ui_closes_the_client(console, pika_conn):
    name = pika_conn.connection_name
    goto(console, "#/connections")
    link = ('//tr[@data-testid="connections-row"][td[@data-field="user_provided_name" and text()="%s"]]'
            '/td[@data-field="name"]/a' % name)
    wait(console).until(EC.element_to_be_clickable((By.XPATH, link))).click()
    wait_text(console, '[data-testid="connection-props"] [data-field="user_provided_name"]', name)
    reason = console.find_element(By.ID, "close-reason")
    reason.clear()
    reason.send_keys("closed by the console test")
    console.find_element(By.ID, "connection-close").click()
    wait(console).until(EC.alert_is_present()).accept()
    wait(console).until(lambda d: d.current_url.endswith("#/connections"))
    with pytest.raises(pika.exceptions.ConnectionClosed) as closed:
        for _ in range(50):
            pika_conn.process_data_events(time_limit=0.1)
    assert closed.value.reply_code == 320
    assert "closed by the console test" in closed.value.reply_text


def test_an_api_refusal_is_shown_with_its_reason(console, uniq):
    goto(console, "#/queues")
    wait(console).until(EC.visibility_of_element_located((By.ID, "queue-declare")))
    console.find_element(By.ID, "queue-name").send_keys(uniq("q"))
    console.find_element(By.ID, "queue-arguments").send_keys('{"x-max-length": "many"}')
    console.find_element(By.ID, "queue-declare-submit").click()
    wait(console).until(EC.visibility_of_element_located((By.ID, "error")))
    assert "x-max-length" in console.find_element(By.ID, "error").text


def test_a_user_added_with_permissions_through_the_ui_can_connect(console, broker, uniq):
    user = uniq("user")
    goto(console, "#/users")
    wait(console).until(EC.visibility_of_element_located((By.ID, "user-add")))
    console.find_element(By.ID, "user-name").send_keys(user)
    console.find_element(By.ID, "user-password").send_keys("s3cret")
    console.find_element(By.ID, "user-tags").send_keys("management")
    console.find_element(By.ID, "user-add-submit").click()
    wait_text(console, "#notice", "User saved.")
    wait_text(console, 'tr[data-testid="users-row"][data-name="%s"] td[data-field="tags"]' % user, "management")

    params = pika.ConnectionParameters(
        host=broker.host, port=broker.port, virtual_host="/",
        credentials=pika.PlainCredentials(user, "s3cret"), connection_attempts=1)
    # No permissions yet: the vhost refuses the user (RabbitMQ's 530 at connection.open).
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params).close()

    goto(console, "#/permissions")
    wait(console).until(EC.visibility_of_element_located((By.ID, "permission-set")))
    console.find_element(By.ID, "permission-user").send_keys(user)
    console.find_element(By.ID, "permission-set-submit").click()
    wait_text(console, "#notice", "Permission set.")
    wait_text(console, 'tr[data-testid="permissions-row"][data-vhost="/"][data-name="%s"] td[data-field="read"]' % user, ".*")
    conn = pika.BlockingConnection(params)
    assert conn.is_open
    conn.close()

    goto(console, "#/users")
    delete = 'tr[data-testid="users-row"][data-name="%s"] [data-testid="user-delete"]' % user
    wait(console).until(EC.element_to_be_clickable((By.CSS_SELECTOR, delete))).click()
    wait(console).until(EC.alert_is_present()).accept()
    wait_text(console, "#notice", "User deleted.")
    wait(console).until(lambda d: not d.find_elements(By.CSS_SELECTOR, delete))


def test_a_policy_added_through_the_ui_applies_to_matching_queues(console, pika_conn, uniq):
    q = uniq("q")
    policy = uniq("policy")
    ch = pika_conn.channel()
    ch.queue_declare(q)
    goto(console, "#/policies")
    wait(console).until(EC.visibility_of_element_located((By.ID, "policy-add")))
    console.find_element(By.ID, "policy-name").send_keys(policy)
    console.find_element(By.ID, "policy-pattern").send_keys("^" + q.replace(".", "\\.") + "$")
    console.find_element(By.CSS_SELECTOR, '#policy-apply-to option[value="queues"]').click()
    console.find_element(By.ID, "policy-definition").send_keys('{"max-length": 1}')
    console.find_element(By.ID, "policy-add-submit").click()
    wait_text(console, "#notice", "Policy saved.")
    wait_text(console, 'tr[data-testid="policies-row"][data-vhost="/"][data-name="%s"] td[data-field="definition"]' % policy,
              '{"max-length":1}')

    # The queue's page names the policy, and max-length 1 keeps only the newest message.
    goto(console, "#/queues/%2F/" + q)
    wait_text(console, '[data-testid="queue-props"] [data-field="policy"]', policy)
    ch.confirm_delivery()
    for body in (b"old", b"new"):
        ch.basic_publish("", q, body)
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    assert ch.basic_get(q, auto_ack=True)[2] == b"new"

    goto(console, "#/policies")
    delete = 'tr[data-testid="policies-row"][data-vhost="/"][data-name="%s"] [data-testid="policy-delete"]' % policy
    wait(console).until(EC.element_to_be_clickable((By.CSS_SELECTOR, delete))).click()
    wait(console).until(EC.alert_is_present()).accept()
    wait_text(console, "#notice", "Policy deleted.")
    ch.queue_delete(q)
