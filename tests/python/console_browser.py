"""The web console end to end in headless Chromium (tests/browser.rs starts `orderflow run`).

Usage: console_browser.py BASE_URL SCREENSHOT_DIR DOWNLOAD_DIR NOTIFICATIONS (the file sink's
`notifications.jsonl`, where the emailed verification code lands); the admin's access token in
ORDERFLOW_TEST_TOKEN (to create the customers). Prints each step; exits non-zero on the first
failure, with a screenshot of the page as it was (`failure.png`).
"""

import glob
import json
import os
import re
import sys
import time
import urllib.request

from pypdf import PdfReader
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE, SHOTS, DOWNLOADS, NOTIFICATIONS = sys.argv[1:5]
ADMIN_TOKEN = os.environ["ORDERFLOW_TEST_TOKEN"]
PASSWORD = "correct horse battery"
# A customer whose name is outside Latin-1: the invoice must print it as written.
ZOE = ("Zoë Жуков", "zoe@example.test")
OTHER = ("Other Customer", "other@example.test")
WAIT = 40


def step(text):
    print(f"- {text}", flush=True)


def api(method, path, body=None, token=ADMIN_TOKEN):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1280,1000", "--lang=en-US"]:
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": DOWNLOADS,
                                              "download.prompt_for_download": False})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": DOWNLOADS})
    return driver


def wait(driver, condition, what):
    try:
        # The live page redraws as the order moves on: an element may go stale between a
        # look-up and its use; the condition is then tried again.
        return WebDriverWait(driver, WAIT, poll_frequency=0.1,
                             ignored_exceptions=[StaleElementReferenceException]).until(
            lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}")


def css(driver, selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def shot(driver, name):
    path = os.path.join(SHOTS, f"{name}.png")
    driver.save_screenshot(path)
    step(f"screenshot {path}")


def login(driver, email, password):
    driver.get(BASE + "/#/login")
    wait(driver, lambda d: css(d, "#login-email"), "the login form")
    css(driver, "#login-email")[0].send_keys(email)
    # The keyboard alone: Enter submits.
    css(driver, "#login-password")[0].send_keys(password, Keys.ENTER)
    wait(driver, lambda d: css(d, "#orders"), "the order list after logging in")


def logout(driver):
    css(driver, "#logout")[0].click()
    wait(driver, lambda d: css(d, "#login-form"), "the login form after logging out")


def status_of(driver):
    badge = css(driver, "#order-status [data-status]")
    return badge[0].get_attribute("data-status") if badge else None


def order_id_of(driver):
    return driver.current_url.split("#/orders/")[1]


def place_order(driver, quantity, method="card", country="DE"):
    driver.get(BASE + "/#/new")
    wait(driver, lambda d: css(d, "input[data-sku='MUG-001']"), "the catalogue")
    qty = css(driver, "input[data-sku='MUG-001']")[0]
    qty.clear()
    qty.send_keys(str(quantity))
    for name, value in [("line1", "Straße des 17. Juni 1"), ("city", "Berlin"),
                        ("postal_code", "10623"), ("country", country)]:
        field = css(driver, f"#new-order input[name='{name}']")[0]
        field.clear()
        field.send_keys(value)
    Select(css(driver, "#payment-method")[0]).select_by_value(method)
    css(driver, "#place-order")[0].click()


def emailed_code():
    """The verification code the file sink got (the only account that registered)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            with open(NOTIFICATIONS, encoding="utf-8") as f:
                notes = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            notes = []
        for note in notes:
            if note.get("kind") == "verify_email":
                found = re.search(r"\b(\d{6})\b", note.get("text", ""))
                if found:
                    return found.group(1)
        time.sleep(0.1)
    raise AssertionError("no verification email")


def main():
    for name, email in [ZOE]:
        status, body = api("POST", "/v1/customers",
                           {"name": name, "email": email, "password": PASSWORD})
        assert status in (201, 409), (status, body)

    driver = browser()
    try:
        run(driver)
    except BaseException:
        shot(driver, "failure")
        print(driver.page_source[:4000], file=sys.stderr)
        raise
    finally:
        driver.quit()


def run(driver):
    driver.get(BASE + "/")
    wait(driver, lambda d: css(d, "#login-form"), "the login page")
    shot(driver, "login")

    step("a customer logs in and places an order; a wrong field is named next to it")
    login(driver, ZOE[1], PASSWORD)
    nav = css(driver, "#nav")[0].text
    assert "Orders" in nav and "Pipeline" not in nav and "false" not in nav, nav
    place_order(driver, 2, country="D1")
    error = wait(driver, lambda d: css(d, "input[name='country'] + .field-error"),
                 "the country's error next to it")
    assert "must" in error[0].text, error[0].text
    shot(driver, "new-order-error")
    country = css(driver, "#new-order input[name='country']")[0]
    country.clear()
    country.send_keys("DE")
    css(driver, "#place-order")[0].click()
    wait(driver, lambda d: "#/orders/" in d.current_url and css(d, "#timeline"), "the order page")
    first = order_id_of(driver)

    step("its timeline reaches invoiced live, without a reload")
    driver.execute_script("window.__notReloaded = true;")
    wait(driver, lambda d: status_of(d) == "invoiced", "the order invoiced")
    assert driver.execute_script("return window.__notReloaded === true;"), "the page reloaded"
    steps = [li.get_attribute("data-status") for li in css(driver, "#timeline li")]
    assert steps[:4] == ["accepted", "validated", "paid", "invoiced"], steps
    assert "Zoë Жуков" in css(driver, "#order-address")[0].text
    wait(driver, lambda d: css(d, "#live-state.live:not(.off)"), "the live indicator")
    shot(driver, "order-invoiced")

    step("the invoice downloads and names the customer and address as written")
    css(driver, "#download-invoice")[0].click()
    pdfs = wait(driver, lambda d: glob.glob(os.path.join(DOWNLOADS, "INV-*.pdf")), "the PDF")
    text = "".join(page.extract_text() for page in PdfReader(pdfs[0]).pages)
    for expected in ["Zoë Жуков", "Straße des 17. Juni 1", "10623 Berlin", "Total"]:
        assert expected in text, (expected, text)

    step("an unpaid order (bank transfer) and one cancelled by the customer")
    place_order(driver, 1, method="bank_transfer")
    wait(driver, lambda d: "#/orders/" in d.current_url and status_of(d) == "validated",
         "the transfer order validated")
    unpaid = order_id_of(driver)
    place_order(driver, 1, method="bank_transfer")
    wait(driver, lambda d: "#/orders/" in d.current_url and order_id_of(d) != unpaid
         and status_of(d) == "validated", "the second transfer order validated")
    cancelled = order_id_of(driver)
    css(driver, "#cancel")[0].click()
    driver.switch_to.alert.accept()
    wait(driver, lambda d: status_of(d) == "cancelled", "the order cancelled")
    logout(driver)

    step("an admin adjusts the price of the unpaid order; it is re-priced live")
    login(driver, "admin@example.com", "admin123")
    driver.get(BASE + f"/#/orders/{unpaid}")
    price = wait(driver, lambda d: css(d, ".price-form input[name='price']"), "the price form")[0]
    price.clear()
    price.send_keys("-1", Keys.ENTER)
    wait(driver, lambda d: css(d, ".price-form .field-error"), "the price's error next to it")
    price = css(driver, ".price-form input[name='price']")[0]
    price.clear()
    price.send_keys("9.00", Keys.ENTER)
    wait(driver, lambda d: any(e.text == "9.00 EUR" for e in css(d, "#subtotal")),
         "the order re-priced at 9.00")
    assert any("price of MUG-001" in li.text for li in css(driver, "#timeline li"))
    shot(driver, "order-price-adjusted")

    step("the admin ships the invoiced order")
    driver.get(BASE + f"/#/orders/{first}")
    wait(driver, lambda d: css(d, "#ship"), "the ship button")[0].click()
    wait(driver, lambda d: status_of(d) == "shipped", "the order shipped")

    step("the admin's pages: every order, customers, products, the pipeline")
    driver.get(BASE + "/#/orders")
    wait(driver, lambda d: css(d, f"#orders tr[data-order-id='{first}']"), "all orders")
    shot(driver, "orders-admin")
    driver.get(BASE + "/#/customers")
    wait(driver, lambda d: any("Zoë Жуков" in td.text for td in css(d, "#customers td")),
         "the customers")
    shot(driver, "customers")
    driver.get(BASE + "/#/products")
    wait(driver, lambda d: css(d, "#products tbody tr"), "the products")
    shot(driver, "products")
    driver.get(BASE + "/#/pipeline")
    wait(driver, lambda d: css(d, "#kpi-invoiced") and css(d, "#by-status tbody tr"),
         "the pipeline summary")
    wait(driver, lambda d: any("invoiced" in td.text for td in css(d, "#by-status td")),
         "invoiced orders in the summary")
    shot(driver, "pipeline")
    logout(driver)

    step("the customer sees shipped, and the cancelled order still listed")
    login(driver, ZOE[1], PASSWORD)
    row = css(driver, f"#orders tr[data-order-id='{first}'] [data-status]")
    assert row and row[0].get_attribute("data-status") == "shipped", "shipped in the list"
    cancelled_row = css(driver, f"#orders tr[data-order-id='{cancelled}']")
    assert cancelled_row, "the cancelled order is listed"
    assert "cancelled" in cancelled_row[0].get_attribute("class")
    shot(driver, "orders")
    driver.set_window_size(390, 844)
    driver.get(BASE + f"/#/orders/{first}")
    wait(driver, lambda d: status_of(d) == "shipped", "the order at phone width")
    width = driver.execute_script("return document.documentElement.scrollWidth;")
    assert width <= 400, f"the page is {width}px wide at phone width"
    shot(driver, "order-phone")
    driver.set_window_size(1280, 1000)
    logout(driver)

    step("another customer registers, verifies the emailed code, and sees none of these orders")
    driver.get(BASE + "/#/register")
    form = wait(driver, lambda d: css(d, "#register-form"), "the registration form")[0]
    for name, value in [("name", OTHER[0]), ("email", OTHER[1]), ("password", PASSWORD),
                        ("confirm", PASSWORD)]:
        form.find_element(By.NAME, name).send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver, lambda d: "code was sent" in css(d, "#banner")[0].text, "the code sent")
    code = css(driver, "#verify-form input[name='code']")[0]
    code.send_keys(emailed_code(), Keys.ENTER)
    wait(driver, lambda d: css(d, "#login-form"), "the login form after verifying")
    login(driver, OTHER[1], PASSWORD)
    assert not css(driver, "#orders tr[data-order-id]"), "another customer's orders listed"
    driver.get(BASE + f"/#/orders/{first}")
    banner = wait(driver, lambda d: [b for b in css(d, "#banner") if b.is_displayed()],
                  "the error banner")
    assert f"no order {first}" in banner[0].text, banner[0].text
    step("done")


if __name__ == "__main__":
    main()
